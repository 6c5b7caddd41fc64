"""Fit a conversation into the context: keep the system messages and the newest turns.

When prompt + ``max_tokens`` do not fit, llama.cpp keeps the first ``n_keep`` tokens and drops
from the middle (``--context-shift``). On whole messages the same idea reads: keep every
system/developer message, drop the oldest whole turns (a user message and the replies after
it) until the rest fits, and always keep the newest turn. The caller says how many messages
went (``usage.truncated_messages``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

KEPT_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class FittedPrompt:
    ids: list[int]
    messages: list[dict[str, str]]
    dropped: int  # messages left out


def turn_starts(messages: Sequence[dict[str, str]]) -> list[int]:
    """Indexes where a turn starts: each user message (and a leading non-user message)."""
    first = next((i for i, m in enumerate(messages) if m["role"] not in KEPT_ROLES), None)
    return [i for i, m in enumerate(messages) if m["role"] == "user" or i == first]


def fit_messages(messages: list[dict[str, str]], encode: Callable[[list[dict[str, str]]],
                 list[int]], fits: Callable[[int], bool]) -> FittedPrompt:
    """Drop the oldest whole turns of ``messages`` until ``fits(len(ids))``.

    Args:
        messages: the conversation (``{"role", "content"}``).
        encode: messages to prompt token ids (the chat template).
        fits: whether a prompt of that many tokens leaves room for the reply.

    Returns:
        the prompt ids, the messages kept and how many were dropped; the newest turn is
        always kept, so the result may still not fit (the caller decides).
    """
    ids, kept = encode(messages), messages
    starts = turn_starts(messages)
    cut = 0
    while not fits(len(ids)) and cut + 1 < len(starts):
        cut += 1
        gone = set(range(starts[0], starts[cut]))
        kept = [m for i, m in enumerate(messages)
                if i not in gone or m["role"] in KEPT_ROLES]
        ids = encode(kept)
    return FittedPrompt(ids, kept, len(messages) - len(kept))

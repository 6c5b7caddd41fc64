"""Log-probabilities on the wire: OpenAI's chat and (legacy) completions shapes.

The sampler (:mod:`agent.services.inference.sampling`) gives token ids with log-probabilities;
this module renders them with the tokenizer's bytes per token (``piece``):

- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
  "bytes"}, ...]}, ...]}``;
- completions: ``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token:
  logprob}, ...], "text_offset": [...]}``.

A token that is part of a multi-byte character (byte-level tokenizers) has ``token`` with
U+FFFD and its exact bytes in ``bytes``, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.services.inference.sampling import TokenLogprob

Piece = Callable[[int], bytes]


def _entry(piece: Piece, token: int, logprob: float) -> dict[str, Any]:
    raw = piece(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries: Sequence[TokenLogprob], piece: Piece) -> dict[str, Any]:
    """OpenAI chat ``choices[].logprobs`` of ``entries``."""
    return {"content": [{**_entry(piece, e.token, e.logprob),
                         "top_logprobs": [_entry(piece, t, lp) for t, lp in e.top]}
                        for e in entries]}


def completion_logprobs(entries: Sequence[TokenLogprob], piece: Piece, offset: int = 0
                        ) -> tuple[dict[str, Any], int]:
    """OpenAI completions ``choices[].logprobs`` of ``entries`` and the offset after them.

    ``offset``: where the first token's text starts in the reply (streamed chunks continue).
    """
    tokens: list[str] = []
    offsets: list[int] = []
    for e in entries:
        text = piece(e.token).decode("utf-8", "replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    body = {
        "tokens": tokens, "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{piece(t).decode("utf-8", "replace"): lp for t, lp in e.top}
                         for e in entries],
        "text_offset": offsets}
    return body, offset

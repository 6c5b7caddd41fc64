"""Which tokens the program's KV cache holds, so a follow-up turn prefills only what is new.

llama.cpp's server keeps the prompt cache across requests (``cache_prompt``): turn N of a chat
starts with turns 1..N-1, whose keys and values are already in the cache. The program
(``agent.io.runtime.InferProgram``) masks every position after the ones written, so reusing a
prefix is feeding only the suffix at ``start_pos = len(prefix)``: nothing to clear.

The program has ONE KV buffer, so only one sequence is resident at a time. The cache keeps an
LRU of the last few sequences' token ids (a board's few users) for accounting, but only the
most recent one can be reused; a hit on an evicted one re-prefills (and becomes resident).
A sequence is keyed by the adapter version it ran with: the adapter changes every key and
value, so a swap invalidates it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class CacheLookup:
    """How much of a prompt is already in the program's KV cache."""

    reused: int  # prompt tokens whose keys/values are resident (feed from here)
    kind: str  # "resident" | "evicted" (seen, but not in the program) | "miss"


class PromptCache:
    """The token ids of the last ``slots`` sequences; the newest one is in the program.

    Args:
        slots: sequences remembered (LRU); 0 turns reuse off.
    """

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self._seqs: OrderedDict[tuple[str, tuple[int, ...]], None] = OrderedDict()
        self._resident: tuple[str, tuple[int, ...]] | None = None
        self.hits = self.misses = self.reused_tokens = 0

    def lookup(self, key: str | None, prompt_ids: Sequence[int]) -> CacheLookup:
        """What of ``prompt_ids`` (run with adapter ``key``) can be skipped.

        At least one prompt token is always left to feed: its logits start generation.
        """
        if key is None or self.slots == 0:
            return CacheLookup(0, "miss")
        resident = self._resident
        if resident is not None and resident[0] == key:
            n = min(common_prefix_len(resident[1], prompt_ids), len(prompt_ids) - 1)
            if n > 0:
                self.hits += 1
                self.reused_tokens += n
                return CacheLookup(n, "resident")
        self.misses += 1
        seen = any(k == key and common_prefix_len(ids, prompt_ids) > 0
                   for k, ids in self._seqs)
        return CacheLookup(0, "evicted" if seen else "miss")

    def invalidate(self) -> None:
        """The program's cache is being written: nothing in it is known good until stored."""
        self._resident = None

    def clear(self) -> None:
        """Forget every sequence: another bundle serves (its adapter versions may repeat the
        old bundle's, e.g. ``initial``, but none of their keys and values carry over)."""
        self._seqs.clear()
        self._resident = None

    def store(self, key: str | None, fed_ids: Sequence[int]) -> None:
        """The program now holds ``fed_ids`` (prompt + generated tokens fed back), for ``key``."""
        if key is None or self.slots == 0:
            self._resident = None
            return
        entry = (key, tuple(fed_ids))
        self._seqs.pop(entry, None)
        self._seqs[entry] = None
        while len(self._seqs) > self.slots:
            self._seqs.popitem(last=False)
        self._resident = entry

    def stats(self) -> dict[str, int]:
        """Counters for /health and benchmarks."""
        return {"slots": self.slots, "held": len(self._seqs), "hits": self.hits,
                "misses": self.misses, "reused_tokens": self.reused_tokens}

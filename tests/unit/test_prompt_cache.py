"""Prompt cache bookkeeping, context fitting and incremental detokenization (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from agent.services.inference.context_fit import fit_messages, turn_starts
from agent.services.inference.detokenize import IncrementalDecoder
from agent.services.inference.prompt_cache import PromptCache, common_prefix_len


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2


def test_only_the_resident_sequence_is_reused() -> None:
    cache = PromptCache(2)
    assert cache.lookup("v1", [1, 2, 3]).kind == "miss"
    cache.store("v1", [1, 2, 3, 9])
    hit = cache.lookup("v1", [1, 2, 3, 9, 4, 5])
    assert (hit.reused, hit.kind) == (4, "resident")
    # one token is always left to feed: its logits start generation
    assert cache.lookup("v1", [1, 2, 3]).reused == 2
    # another adapter version: its keys and values differ
    assert cache.lookup("v2", [1, 2, 3, 9, 4]).reused == 0
    cache.store("v1", [7, 8])  # another conversation becomes resident
    evicted = cache.lookup("v1", [1, 2, 3, 9, 4])
    assert (evicted.reused, evicted.kind) == (0, "evicted")
    cache.store("v1", [5])
    cache.store("v1", [6])  # LRU of 2: [1, 2, 3, 9] is forgotten
    assert cache.lookup("v1", [1, 2, 3]).kind == "miss"
    assert cache.stats()["held"] == 2


def test_invalidate_and_off() -> None:
    cache = PromptCache(4)
    cache.store("v1", [1, 2, 3])
    cache.invalidate()  # a request failed while writing the program's cache
    assert cache.lookup("v1", [1, 2, 3, 4]).reused == 0
    off = PromptCache(0)
    off.store("v1", [1, 2, 3])
    assert off.lookup("v1", [1, 2, 3, 4]).reused == 0
    assert PromptCache(4).lookup(None, [1, 2]).reused == 0


def _encode(messages: Sequence[dict[str, str]]) -> list[int]:
    return [len(m["content"]) for m in messages for _ in range(len(m["content"]))]


def _turns(n: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(n):
        msgs += [{"role": "user", "content": f"q{i}" * 5},
                 {"role": "assistant", "content": f"a{i}" * 5}]
    return msgs + [{"role": "user", "content": "last"}]


def test_fit_keeps_system_and_newest_turns() -> None:
    msgs = _turns(4)
    assert turn_starts(msgs) == [1, 3, 5, 7, 9]
    whole = len(_encode(msgs))
    same = fit_messages(msgs, _encode, lambda n: n <= whole)
    assert (same.dropped, same.messages) == (0, msgs)
    fitted = fit_messages(msgs, _encode, lambda n: n <= whole - 30)
    assert fitted.dropped == 4  # two whole turns of 10+10 characters
    assert fitted.messages == [msgs[0], *msgs[5:]]
    assert fitted.ids == _encode(fitted.messages)
    tiny = fit_messages(msgs, _encode, lambda n: n <= 1)  # the newest turn always stays
    assert tiny.messages == [msgs[0], msgs[-1]] and tiny.dropped == 8


def _byte_decode(ids: Sequence[int]) -> str:
    """A byte-level tokenizer: one token per byte."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decode_keeps_utf8_boundaries() -> None:
    text = "héllo wörld: 日本語 🙂 ok"
    ids = list(text.encode())
    dec = IncrementalDecoder(_byte_decode)
    deltas = [dec.push(t) for t in ids]
    deltas.append(dec.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[ids.index(0xF0)] == ""  # the emoji's first byte is held back


def test_incremental_decode_of_invalid_bytes_matches_full_decode() -> None:
    ids = [0x61, 0xE6, 0x97, 0x62, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x63, 0xF0, 0x9F]
    dec = IncrementalDecoder(_byte_decode)
    got = "".join(dec.push(t) for t in ids) + dec.flush()
    assert got == _byte_decode(ids)

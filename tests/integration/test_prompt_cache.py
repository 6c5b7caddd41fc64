"""The prompt cache and the context end on the real runtime (starter bundle).

Greedy outputs with the cache must be exactly those without it, over multi-turn
conversations (turn N's prompt starts with turn N-1's prompt and reply) and across adapter
swaps (another adapter version never reuses the resident sequence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram
from agent.services.inference.detokenize import IncrementalDecoder
from agent.services.inference.generation import GenerationResult, Generator, TextCodec
from agent.services.inference.prompt_cache import PromptCache
from agent.services.inference.sampling import SamplingParams

pytestmark = pytest.mark.runtime

GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
QUESTIONS = ["hi", "more", "why"]  # the starter's context is 128 tokens


def _generator(bundle: Path, slots: int, cap: int | None = None) -> Generator:
    codec = TextCodec.for_bundle(bundle, read_manifest(bundle))
    return Generator(InferProgram(bundle), codec, context_cap=cap,
                     prompt_cache=PromptCache(slots))


def _rows(bundle: Path) -> dict[str, np.ndarray]:
    n = read_manifest(bundle).lora.num_params
    return {"zero": np.zeros(n, np.float32),
            "v1": np.random.default_rng(1).normal(0, 0.05, n).astype(np.float32),
            "v2": np.random.default_rng(2).normal(0, 0.05, n).astype(np.float32)}


def _conversation(gen: Generator, versions: list[str], rows: dict[str, np.ndarray]
                  ) -> list[GenerationResult]:
    """A chat whose turn i runs with adapter ``versions[i]``: each turn carries the history."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "brief"}]
    results = []
    for question, version in zip(QUESTIONS, versions, strict=False):
        messages.append({"role": "user", "content": question})
        ids = gen.codec.encode_chat(messages)
        result = gen.generate(ids, GREEDY, rows[version], cache_key=version)
        results.append(result)
        messages.append({"role": "assistant", "content": result.text})
    return results


@pytest.fixture(scope="module")
def pair(starter_bundle: Path) -> tuple[Generator, Generator]:
    return _generator(starter_bundle, 4), _generator(starter_bundle, 0)


@pytest.mark.parametrize("versions", [["v1"] * 3, ["zero", "zero", "v1"],
                                      ["v1", "v2", "v2"]])
def test_cached_turns_generate_as_uncached(pair: tuple[Generator, Generator],
                                           starter_bundle: Path, versions: list[str]) -> None:
    cached, cold = pair
    rows = _rows(starter_bundle)
    with_cache = _conversation(cached, versions, rows)
    without = _conversation(cold, versions, rows)
    assert [(r.text, r.completion_tokens, r.finish_reason) for r in with_cache] == \
        [(r.text, r.completion_tokens, r.finish_reason) for r in without]
    assert all(r.cached_tokens == 0 for r in without)
    for before, now, r in zip(versions, versions[1:], with_cache[1:], strict=False):
        if before == now:  # the follow-up turn re-read at least the previous prompt
            assert r.cached_tokens >= with_cache[0].prompt_tokens - 1
        else:  # an adapter swap invalidates the resident sequence
            assert r.cached_tokens == 0


def test_unrelated_prompt_and_repeat(pair: tuple[Generator, Generator],
                                     starter_bundle: Path) -> None:
    cached, cold = pair
    row = _rows(starter_bundle)["v1"]
    prompt = cached.codec.encode_prompt("The quick brown fox")
    first = cached.generate(prompt, GREEDY, row, cache_key="v1")
    again = cached.generate(prompt, GREEDY, row, cache_key="v1")  # all but one token reused
    assert again.cached_tokens == len(prompt) - 1
    other = cached.codec.encode_prompt("Completely different")
    assert cached.generate(other, GREEDY, row, cache_key="v1").text == \
        cold.generate(other, GREEDY, row).text
    assert first.text == again.text == cold.generate(prompt, GREEDY, row).text


def test_generation_stops_at_the_context_end(starter_bundle: Path) -> None:
    gen = _generator(starter_bundle, 4, cap=48)
    prompt = gen.codec.encode_prompt("x" * 40)
    params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)
    result = gen.generate(prompt, params, _rows(starter_bundle)["v1"], cache_key="v1")
    assert result.finish_reason == "length"
    assert result.prompt_tokens + result.completion_tokens == 48


def test_streamed_deltas_are_the_full_decode(starter_bundle: Path) -> None:
    codec = TextCodec.for_bundle(starter_bundle, read_manifest(starter_bundle))
    text = "naïve café — 日本語のテキスト 🙂🚀 done"
    ids = codec.tok.encode(text, add_special_tokens=False)
    dec = IncrementalDecoder(codec.decode)
    deltas = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(deltas) == codec.decode(ids)
    assert all("\ufffd" not in d for d in deltas)

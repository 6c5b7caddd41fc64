"""What ``mobizo-bench serve`` and ``serve --vs-llamacpp`` share: adapters, the prompt, greedy
token ids from the service's own generator, and adapter switches under load."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (nan when empty)."""
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def write_adapters(work: Path, validator: Any, count: int) -> list[np.ndarray]:
    """``count`` seeded random adapters written to ``work/a<k>``; returns their flat B."""
    from agent.io.adapter_fs import write_adapter

    rng = np.random.default_rng(0)
    flats = [(rng.standard_normal(validator.layout.num_params) * 0.02).astype(np.float32)
             for _ in range(count)]
    for k, flat in enumerate(flats):
        write_adapter(work / f"a{k}", validator.layout, flat, validator.a_tensors)
    return flats


SENTENCE = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog.")


def bench_prompt(svc: Any, prompt_tokens: int, variant: int = 0) -> tuple[list[int], str]:
    """A prompt of exactly ``prompt_tokens`` tokens: its ids and its text.

    ``variant`` k starts the sentence at its k-th word (then a number before it), so
    prompts of different variants share no prefix but the tokenizer's BOS: timed repeats
    of distinct prompts are cold prefills, as a user's new prompt is, not prompt-cache hits.
    """
    k, lap = variant % len(SENTENCE), variant // len(SENTENCE)
    words = [*SENTENCE[k:], *SENTENCE[:k]]
    text = (f"{lap} " if lap else "") + (" ".join(words) + " ") * 64
    prompt_ids = svc.codec.encode_prompt(text)[:prompt_tokens]
    prompt = svc.codec.decode(prompt_ids)  # without a BOS the tokenizer adds back itself
    if svc.codec.encode_prompt(prompt) != prompt_ids:
        raise RuntimeError("the benchmark prompt does not round-trip through the tokenizer")
    return prompt_ids, prompt


def http_speeds(client: Any, prompt_tokens: int, gen_tokens: int, repeats: int,
                svc: Any) -> dict[str, float]:
    """Our service through HTTP, one distinct prompt per request (no prompt-cache hit
    beyond the BOS): medians of prompt and decode tokens/s from its ``timings`` (prompt
    tokens/s over the tokens it fed, ``prompt_n``), of the whole request's latency, and of
    the request's time outside prefill + decode; the load average when it ended."""
    prompts = [bench_prompt(svc, prompt_tokens, k)[1] for k in range(repeats + 1)]
    req = {"max_tokens": gen_tokens, "temperature": 0, "ignore_eos": True}
    client.complete(prompts[0], **req)  # warm-up
    rows, cached = [], 0
    for prompt in prompts[1:]:
        t0 = time.perf_counter()
        reply = client.complete(prompt, **req)
        wall = time.perf_counter() - t0
        if reply.status != 200:
            raise RuntimeError(f"the service answered {reply.status}: {reply.text[:300]}")
        t = reply.json["timings"]
        cached = max(cached, int(t.get("cache_n", 0)))
        rows.append((t["prompt_n"] / (t["prompt_ms"] / 1000),
                     (t["predicted_n"] - 1) / (t["predicted_ms"] / 1000), wall,
                     wall - (t["prompt_ms"] + t["predicted_ms"]) / 1000))
    med = np.median(np.asarray(rows), axis=0)
    return {"prompt_tok_s": float(med[0]), "gen_tok_s": float(med[1]),
            "end_to_end_s": float(med[2]), "outside_program_ms_per_request": 1000 * med[3],
            "max_cached_tokens": cached, "load_avg_1m": os.getloadavg()[0]}


def switches_under_load(svc: Any, client: Any, versions: list[str], n: int) -> dict[str, Any]:
    """Switch the active adapter ``n`` times while a client keeps generating: even switches
    by control request (``POST /v1/admin/reload-adapter``), odd ones file-only (the watcher
    notices the registry's pointer). ``all_p99_ms`` is over every switch: the control
    request's latency or the time until the watcher had switched."""
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(client.complete("load", max_tokens=8, temperature=0).status)
            except OSError:
                statuses.append(-1)

    loader = threading.Thread(target=load)
    loader.start()
    control, swap, watched = [], [], []
    try:
        for i in range(n):
            target = versions[(i + 1) % 2]
            svc.registry.activate(target)
            if i % 2 == 0:  # by control request
                t0 = time.perf_counter()
                r = client.post("/v1/admin/reload-adapter").json
                control.append((time.perf_counter() - t0) * 1000)
                swap.append(r["seconds"] * 1000)
            else:  # file-only: wait for the watcher
                t0 = time.perf_counter()
                while svc.slot.version != target:
                    time.sleep(0.001)
                watched.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    finally:
        stop.set()
        loader.join()
    return {
        "switches": n, "requests_during": len(statuses),
        "failed_requests": sum(1 for s in statuses if s != 200),
        "control_p50_ms": percentile(control, 50), "control_p99_ms": percentile(control, 99),
        "swap_only_p50_ms": percentile(swap, 50), "swap_only_p99_ms": percentile(swap, 99),
        "watcher_p50_ms": percentile(watched, 50), "watcher_p99_ms": percentile(watched, 99),
        "all_p50_ms": percentile(control + watched, 50),
        "all_p99_ms": percentile(control + watched, 99),
        "watch_interval_ms": svc.config.watch_interval_s * 1000,
        "load_avg_1m": os.getloadavg()[0],  # a loaded machine stretches every switch
    }


def greedy_ids(svc: Any, prompt_ids: list[int], n: int, lora_b: np.ndarray) -> list[int]:
    """The token ids the service's generator picks greedily (``n`` tokens, EOS ignored).

    Call before ``svc.start()``: the generator runs one request at a time. Ids come with
    the log-probabilities (``logprobs = 0``: the chosen token only), which carry the ids
    even of tokens that decode to no text.
    """
    from agent.services.inference.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=0)
    return [e.token for e in svc.generator.generate(prompt_ids, params, lora_b).logprobs]


def id_parity(ours: Sequence[int], theirs: Sequence[int]) -> dict[str, Any]:
    """How many leading token ids two greedy generations share (ids, not text: a random
    model's tokens mostly decode to nothing)."""
    agree = 0
    for a, b in zip(ours, theirs, strict=False):
        if a != b:
            break
        agree += 1
    return {"greedy_prefix_agreement": agree, "of": max(len(ours), len(theirs)),
            "identical": list(ours) == list(theirs)}

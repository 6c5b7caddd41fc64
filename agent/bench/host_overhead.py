"""``mobizo-bench host``: per-token host time of generation, against a decode step.

Each generated token costs a program call (the decode step) and host work around it: the
sampler over the vocabulary (:mod:`agent.services.inference.sampling`), incremental
detokenization and the stop-string scan. The generator measures the second as
``GenerationResult.host_s`` (decode time outside the program); this benchmark runs a bundle's
real program with a few sampling settings and prints host µs per token, the decode step's ms
and their ratio (issue 18's target: host time ≤ 5 % of a decode step). ``--step-ms`` adds a
column against another model's step (e.g. the 110M shape's, measured by ``mobizo-bench
serve``), since host work depends on the vocabulary, not on the model's depth.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

HELP = "per-token host time (sampling, detokenizing, stop strings) vs the decode step"

# name -> SamplingParams fields (beyond max_tokens / ignore_eos)
SETTINGS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "sample T=0.8 top_p=0.9": {"temperature": 0.8, "top_p": 0.9, "seed": 0},
    "sample top_k=40 min_p=0.05": {"temperature": 0.8, "top_k": 40, "min_p": 0.05, "seed": 0},
    "greedy + penalties + bias": {"temperature": 0.0, "repetition_penalty": 1.1,
                                  "presence_penalty": 0.5, "frequency_penalty": 0.5,
                                  "logit_bias": ((1, -5.0), (2, 3.0))},
    "greedy + stop strings": {"temperature": 0.0, "stop": ("</answer>", "\n\nUser:")},
    "greedy + top_logprobs=20": {"temperature": 0.0, "logprobs": 20},
    "greedy + json_schema (llguidance)": {"temperature": 0.0, "json_schema": json.dumps({
        "type": "object", "properties": {"items": {"type": "array", "items": {
            "type": "string"}}}, "required": ["items"]})},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="an exported bundle directory")
    p.add_argument("--tokens", type=int, default=64, help="generated tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (best kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--step-ms", type=float, help="another decode step to compare against")
    p.add_argument("--json", type=Path, help="write the results here")


def measure(bundle: Path, tokens: int, repeats: int, threads: int) -> list[dict[str, Any]]:
    """Per setting: host µs per token and decode ms per token (the best of ``repeats``)."""
    from agent.services.inference.sampling import SamplingParams
    from agent.services.inference.service import InferenceService, ServeConfig

    with tempfile.TemporaryDirectory() as work:
        svc = InferenceService(bundle, Path(work) / "state",
                               ServeConfig(listen="127.0.0.1:0", threads=threads))
        _, lora_b = svc.slot.current()
        prompt = svc.codec.encode_prompt("Host overhead is measured per generated token.")
        budget = min(tokens, svc.generator.max_context - len(prompt) - 1)
        rows = []
        for name, fields in SETTINGS.items():
            if "json_schema" in fields and importlib.util.find_spec("llguidance") is None:
                continue  # the json extra is not installed
            params = SamplingParams(max_tokens=budget, ignore_eos=True, **fields)
            best: tuple[float, float] | None = None
            for _ in range(repeats):
                r = svc.generator.generate(prompt, params, lora_b)
                n = max(r.completion_tokens, 1)
                run = (r.host_s / n, r.decode_s / n)
                best = run if best is None or run[0] < best[0] else best
            assert best is not None
            host, step = best
            rows.append({"setting": name, "host_us": host * 1e6, "decode_ms": step * 1e3,
                         "host_pct": 100 * host / step if step > 0 else 0.0})
        return rows


def main(args: argparse.Namespace) -> int:
    rows = measure(args.bundle, args.tokens, args.repeats, args.threads)
    extra = f" | % of a {args.step_ms} ms step" if args.step_ms else ""
    print(f"setting | host µs/token | decode ms/token | host % of this step{extra}")
    for row in rows:
        other = f" | {row['host_us'] / 10 / args.step_ms:.2f} %" if args.step_ms else ""
        if args.step_ms:
            row["host_pct_of_step_ms"] = row["host_us"] / 10 / args.step_ms
        print(f"{row['setting']} | {row['host_us']:.0f} | {row['decode_ms']:.2f} | "
              f"{row['host_pct']:.2f} %{other}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0

"""``mobizo-bench serve``: the inference service against eager transformers, and hot-swap cost.

One run, one machine, side by side:

1. Speed: prompts of the same length, the same adapter (random LoRA-B, published and
   active), greedy, a fixed number of generated tokens (``ignore_eos``). The service is
   measured through its HTTP API (its ``timings``: prefill and decode time inside the worker;
   a distinct prompt per request, so the prompt cache does not skip the prefill) and end to end;
   eager is transformers ``generate`` on the bundle's base model with the adapter merged
   (``exporter.reference``), prefill timed as one forward over the prompt.
2. Parity: how many of the generated token ids agree between the two (greedy, so they should,
   up to float round-off on near-ties). Ids, not text: a random model's tokens mostly decode
   to nothing; the service's ids come from its own generator before the HTTP front starts.
3. Hot-swap: while a client keeps sending requests, the active adapter is switched N times
   (registry ``activate`` + ``POST /v1/admin/reload-adapter``). Reported: control-request
   latency p50/p99 (validate + swap + HTTP), the in-service swap time alone, watcher-only
   switches (file-only publishes noticed by polling), and failed requests.

ExecuTorch's thread pool is process-wide and cannot be resized at run time (DESIGN §3):
``--threads`` sets torch's threads only, so compare at equal parallelism by pinning the whole
run with ``taskset -c 0 mobizo-bench serve --threads 1`` (or give both every core).

Targets (issue 3): service generation ≥ eager; switch p99 < 50 ms; zero failed requests.

Schemes side by side (issue 8): ``--quantize none,8da8w,8da4w`` instead of ``--bundle`` exports
(once, reused from ``--workdir``) one starter bundle per scheme and runs all of the above on
each, then prints one table: the service's tokens/s per scheme, its speed-up over ``none`` and
whether its greedy token ids still equal fp32 eager transformers'.

Against llama.cpp (issue 18 item 5): ``--vs-llamacpp`` runs our service beside llama.cpp on
the same weights as GGUF, fp32/8da8w/8da4w beside f32/q8_0/q4_0, with and without the same
LoRA (agent/bench/serve_vs_llamacpp.py says what is measured how; ``--shape 110m`` exports
the shape the issue's targets are set on).

Where the program runs: ``--bundle B --engines inline,process`` measures the service with its
program inline and in its engine child side by side (agent/bench/serve_engines.py).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from agent.bench.serve_common import (
    bench_prompt,
    greedy_ids,
    id_parity,
    switches_under_load,
    write_adapters,
)
from agent.bench.serve_engines import parse_engines
from agent.bench.serve_vs_cli import add_arguments as add_vs_arguments
from agent.core.bundle import QUANT_SCHEMES, QuantScheme

HELP = "inference service vs eager transformers: tokens/s, adapter switch latency"
SCHEMES = QUANT_SCHEMES


def parse_schemes(text: str) -> tuple[QuantScheme, ...]:
    """``"none,8da8w"`` -> ("none", "8da8w"); an unknown or repeated scheme is refused."""
    schemes = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in schemes if s not in SCHEMES]
    if not schemes or bad:
        raise argparse.ArgumentTypeError(
            f"unknown scheme(s) {', '.join(map(repr, bad)) or '(none given)'}; give a "
            f"comma-separated list of {', '.join(SCHEMES)}, e.g. --quantize none,8da8w")
    if len(set(schemes)) != len(schemes):
        raise argparse.ArgumentTypeError(f"a scheme is listed twice in {text!r}")
    return cast("tuple[QuantScheme, ...]", schemes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle directory (or use --quantize)")
    parser.add_argument("--quantize", type=parse_schemes, default=None, metavar="SCHEMES",
                        help="compare base quantization schemes instead of one --bundle: "
                             f"comma-separated {','.join(SCHEMES)}; exports (once) one "
                             "starter bundle per scheme into --workdir")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench"),
                        help="where --quantize keeps its starter bundles (reused)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine")
    parser.add_argument("--switches", type=int, default=40, help="adapter switches under load")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both engines")
    parser.add_argument("--out", "--json", type=Path, default=None,
                        help="also write the results as JSON")
    parser.add_argument("--engines", type=parse_engines, default=None, metavar="ENGINES",
                        help="compare where the program runs on --bundle instead: "
                             "comma-separated inline,process (agent/bench/serve_engines.py)")
    add_vs_arguments(parser)


def run(bundle: Path, *, prompt_tokens: int = 64, gen_tokens: int = 64, repeats: int = 3,
        switches: int = 40, threads: int | None = None) -> dict[str, Any]:
    """Run every measurement; returns a JSON-able dict."""
    import torch

    from agent.io.adapter_fs import AdapterValidator
    from agent.io.http import Client
    from agent.services.inference.service import InferenceService, ServeConfig

    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="mobizo-bench-serve-"))
    validator = AdapterValidator(bundle)
    flats = write_adapters(work, validator, count=2)
    svc = InferenceService(bundle, work / "state", ServeConfig(
        listen="127.0.0.1:0", threads=threads, watch_interval_s=0.01))
    results: dict[str, Any] = {"bundle": str(bundle), "bundle_id": svc.bundle_id,
                               "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                               "threads": threads or torch.get_num_threads(),
                               "cpus": len(os.sched_getaffinity(0)),
                               "load_avg_1m": os.getloadavg()[0]}
    versions = [svc.registry.publish(work / f"a{k}", activate=False) for k in range(2)]
    svc.registry.activate(versions[0])
    prompt_ids, _ = bench_prompt(svc, prompt_tokens)
    # the service's greedy token ids, from its own generator before the HTTP front starts:
    # a random model's text does not give its token ids back (most ids decode to nothing)
    svc_ids = greedy_ids(svc, prompt_ids, gen_tokens, flats[0])
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        assert client.post("/v1/admin/reload-adapter").json["version"] == versions[0]
        req = {"max_tokens": gen_tokens, "temperature": 0, "ignore_eos": True}
        # a distinct prompt per request: a repeated one would be a prompt-cache hit
        prompts = [bench_prompt(svc, prompt_tokens, k)[1] for k in range(repeats + 1)]
        results["service"], _ = _measure_service(client, req, prompts)
        results["eager"], eager_tokens = _measure_eager(
            bundle, validator, work, flats[0], prompt_ids, prompt_tokens, gen_tokens, repeats)
        results["parity"] = id_parity(svc_ids, eager_tokens)
        results["switch"] = switches_under_load(svc, client, versions, switches)
    finally:
        svc.stop()
    results["targets"] = {
        "gen_speed_ge_eager": results["service"]["gen_tok_s"] >= results["eager"]["gen_tok_s"],
        # over every switch, by control request and by the watcher alike
        "switch_p99_lt_50ms": results["switch"]["all_p99_ms"] < 50,
        "zero_failed": results["switch"]["failed_requests"] == 0,
    }
    return results


def _measure_service(client: Any, req: dict[str, Any],
                     prompts: list[str]) -> tuple[dict[str, float], str]:
    """The service's own timings (median over ``prompts[1:]``; the first warms up) and the
    text of the last run. Prompt tokens/s counts the tokens the service fed (``prompt_n``)."""
    client.complete(prompts[0], **req)  # warm-up
    svc_runs = []
    for prompt in prompts[1:]:
        t0 = time.perf_counter()
        body = client.complete(prompt, **req).json
        wall = time.perf_counter() - t0
        svc_runs.append((body["timings"], wall, body))
    stats = {
        "prompt_tok_s": float(np.median([t["prompt_per_second"] for t, _, _ in svc_runs])),
        "gen_tok_s": float(np.median([t["predicted_per_second"] for t, _, _ in svc_runs])),
        "end_to_end_s": float(np.median([w for _, w, _ in svc_runs])),
    }
    return stats, svc_runs[-1][2]["choices"][0]["text"]


def _measure_eager(bundle: Path, validator: Any, work: Path, flat: np.ndarray,
                   prompt_ids: list[int], prompt_tokens: int, gen_tokens: int,
                   repeats: int) -> tuple[dict[str, float], list[int]]:
    """Eager transformers, same base, same adapter merged: speeds and its greedy tokens."""
    import torch

    from exporter.reference import eager_generate, load_base_model, load_lora_a, merged_model

    manifest = validator.manifest
    hf = load_base_model(manifest, work)
    model = merged_model(hf, validator.layout, load_lora_a(bundle, validator.layout), flat)
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        model(ids)  # type: ignore[operator]  # warm-up
        eager_generate(model, prompt_ids, 4)
        pre, gen, eager_tokens = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids)  # type: ignore[operator]
            pre.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model.generate(  # type: ignore[operator]
                ids, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                attention_mask=torch.ones_like(ids),
                pad_token_id=manifest.tokenizer.pad_token_id)
            gen.append(time.perf_counter() - t0)
            eager_tokens = out[0, ids.shape[1]:].tolist()
    p, g = float(np.median(pre)), float(np.median(gen))
    stats = {"prompt_tok_s": prompt_tokens / p,
             "gen_tok_s": gen_tokens / max(g - p, 1e-9), "end_to_end_s": g}
    return stats, eager_tokens


def starter_int4_problem() -> str | None:
    """Why the starter's linears cannot take int4 group weights (8da4w), or None if they can."""
    from exporter.quantize import INT4_GROUP
    from exporter.starter import STARTER_CONFIG

    c = STARTER_CONFIG
    hidden, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    for name, size in (("hidden_size", hidden), ("intermediate_size", inter)):
        if size % INT4_GROUP:
            return (f"--quantize 8da4w needs the starter's linear input sizes to be multiples of "
                    f"{INT4_GROUP}, but its {name} is {size}; drop 8da4w from --quantize")
    return None


def starter_bundle(workdir: Path, scheme: QuantScheme, max_context: int) -> Path:
    """Export (once, then reuse) the starter bundle quantized with ``scheme`` for serving."""
    from agent.bench.serve_bundles import serve_bundle

    return serve_bundle(workdir, "starter", scheme, max_context)


def compare_schemes(schemes: tuple[QuantScheme, ...], workdir: Path,
                    **kwargs: Any) -> dict[str, Any]:
    """``run`` on one starter bundle per scheme; returns {scheme: results}."""
    from agent.errors import ExportError

    if "8da4w" in schemes and (problem := starter_int4_problem()) is not None:
        raise ExportError(problem)
    need = kwargs.get("prompt_tokens", 64) + kwargs.get("gen_tokens", 64)
    max_context = max(256, -(-need // 64) * 64)  # room for prompt + generation
    bundles = {s: starter_bundle(workdir, s, max_context) for s in schemes}  # all exports first
    return {s: run(b, **kwargs) for s, b in bundles.items()}


def format_scheme_table(by_scheme: dict[str, dict[str, Any]]) -> str:
    """One row per scheme: service tokens/s, speed-up over ``none``, parity with fp32 eager."""
    base = by_scheme.get("none")
    first = next(iter(by_scheme.values()))
    lines = [
        f"starter bundles, prompt {first['prompt_tokens']} tok, gen {first['gen_tokens']} tok, "
        f"torch threads {first['threads']}, cpus {first['cpus']}, "
        f"load avg {first['load_avg_1m']:.1f}",
        "| scheme | prompt tok/s | gen tok/s | gen ×none | end-to-end s | greedy = fp32 eager "
        "| switch p99 ms | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scheme, r in by_scheme.items():
        s = r["service"]
        ratio = s["gen_tok_s"] / base["service"]["gen_tok_s"] if base else float("nan")
        lines.append(
            f"| {scheme} | {s['prompt_tok_s']:.0f} | {s['gen_tok_s']:.1f} | {ratio:.2f} | "
            f"{s['end_to_end_s']:.3f} | {r['parity']['identical']} "
            f"({r['parity']['greedy_prefix_agreement']}/{r['parity']['of']}) | "
            f"{r['switch']['all_p99_ms']:.2f} | {r['switch']['failed_requests']} |")
    if first.get("eager"):
        lines.append(f"eager transformers (fp32) gen tok/s: {first['eager']['gen_tok_s']:.1f}")
    return "\n".join(lines)


def format_table(r: dict[str, Any]) -> str:
    s, e, sw = r["service"], r["eager"], r["switch"]
    lines = [
        f"bundle {r['bundle_id']}  prompt {r['prompt_tokens']} tok  gen {r['gen_tokens']} tok"
        f"  torch threads {r['threads']}  cpus {r['cpus']}  load avg {r['load_avg_1m']:.1f}",
        "| engine | prompt tok/s | gen tok/s | end-to-end s |",
        "|---|---|---|---|",
        f"| ExecuTorch service (HTTP) | {s['prompt_tok_s']:.0f} | {s['gen_tok_s']:.1f} | "
        f"{s['end_to_end_s']:.3f} |",
        f"| eager transformers generate | {e['prompt_tok_s']:.0f} | {e['gen_tok_s']:.1f} | "
        f"{e['end_to_end_s']:.3f} |",
        "",
        f"greedy token ids identical: {r['parity']['identical']} (common prefix "
        f"{r['parity']['greedy_prefix_agreement']}/{r['parity']['of']} tokens)",
        f"adapter switches under load: {sw['switches']}, requests during: "
        f"{sw['requests_during']}, failed: {sw['failed_requests']}",
        f"every switch p99 {sw['all_p99_ms']:.2f} ms; "
        f"control request p50 {sw['control_p50_ms']:.2f} ms, p99 {sw['control_p99_ms']:.2f} ms;"
        f" swap alone p50 {sw['swap_only_p50_ms']:.2f} ms, p99 {sw['swap_only_p99_ms']:.2f} ms;"
        f" watcher ({sw['watch_interval_ms']:.0f} ms poll) p50 {sw['watcher_p50_ms']:.1f} ms,"
        f" p99 {sw['watcher_p99_ms']:.1f} ms",
        "targets: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in r["targets"].items()),
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from agent.errors import BundleError

    if getattr(args, "vs_llamacpp", False):
        from agent.bench import serve_vs_cli

        return serve_vs_cli.main(args)
    if getattr(args, "engines", None):
        from agent.bench import serve_engines

        return serve_engines.main(args)
    kwargs = dict(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                  repeats=args.repeats, switches=args.switches, threads=args.threads)
    if args.bundle is None and args.quantize is None:
        raise BundleError("give --bundle DIR to measure one bundle, or --quantize SCHEMES "
                          "(e.g. none,8da8w) to compare one starter bundle per scheme")
    if args.bundle is not None and args.quantize is not None:
        raise BundleError(f"--bundle and --quantize exclude each other: --quantize exports its "
                          f"own starter bundles (into --workdir {args.workdir}); drop one")
    if args.quantize is not None:
        by_scheme = compare_schemes(args.quantize, args.workdir, **kwargs)
        print(format_scheme_table(by_scheme))
        if args.out:
            args.out.write_text(json.dumps(by_scheme, indent=2))
        return 0 if all(all(r["targets"].values()) for r in by_scheme.values()) else 1
    results = run(args.bundle, **kwargs)
    print(format_table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="mobizo-bench serve", description=HELP)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))

"""``mobizo-bench serve``: the inference service against eager transformers, and hot-swap cost.

One run, one machine, side by side:

1. Speed: the same prompt, the same adapter (random LoRA-B, published and active), greedy,
   a fixed number of generated tokens (``ignore_eos``). The service is measured through its
   HTTP API (its ``timings``: prefill and decode time inside the worker) and end to end;
   eager is transformers ``generate`` on the bundle's base model with the adapter merged
   (``exporter.reference``), prefill timed as one forward over the prompt.
2. Parity: how many of the generated tokens agree between the two (greedy, so they should,
   up to float round-off on near-ties).
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
whether its greedy text still equals fp32 eager transformers'.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

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
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


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
    flats = _write_adapters(work, validator, count=2)
    svc = InferenceService(bundle, work / "state", ServeConfig(
        listen="127.0.0.1:0", threads=threads, watch_interval_s=0.01))
    results: dict[str, Any] = {"bundle": str(bundle), "bundle_id": svc.bundle_id,
                               "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                               "threads": threads or torch.get_num_threads(),
                               "cpus": len(os.sched_getaffinity(0)),
                               "load_avg_1m": os.getloadavg()[0]}
    versions = [svc.registry.publish(work / f"a{k}", activate=False) for k in range(2)]
    svc.registry.activate(versions[0])
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        assert client.post("/v1/admin/reload-adapter").json["version"] == versions[0]
        prompt_ids, prompt = _bench_prompt(svc, prompt_tokens)
        req = {"prompt": prompt, "max_tokens": gen_tokens, "temperature": 0, "ignore_eos": True}
        results["service"], svc_text = _measure_service(client, req, repeats)
        results["eager"], eager_tokens = _measure_eager(
            bundle, validator, work, flats[0], prompt_ids, prompt_tokens, gen_tokens, repeats)
        # compare decoded text: a random model emits arbitrary bytes, so re-encoding the
        # service's text would not give its token ids back
        results["parity"] = _parity(svc_text, svc.codec.decode(eager_tokens))
        results["switch"] = _switches(svc, client, versions, switches)
    finally:
        svc.stop()
    results["targets"] = {
        "gen_speed_ge_eager": results["service"]["gen_tok_s"] >= results["eager"]["gen_tok_s"],
        "switch_p99_lt_50ms": results["switch"]["control_p99_ms"] < 50,
        "zero_failed": results["switch"]["failed_requests"] == 0,
    }
    return results


def _write_adapters(work: Path, validator: Any, count: int) -> list[np.ndarray]:
    """``count`` seeded random adapters written to ``work/a<k>``; returns their flat B."""
    from agent.io.adapter_fs import write_adapter

    rng = np.random.default_rng(0)
    flats = [(rng.standard_normal(validator.layout.num_params) * 0.02).astype(np.float32)
             for _ in range(count)]
    for k, flat in enumerate(flats):
        write_adapter(work / f"a{k}", validator.layout, flat, validator.a_tensors)
    return flats


def _bench_prompt(svc: Any, prompt_tokens: int) -> tuple[list[int], str]:
    """A prompt of exactly ``prompt_tokens`` tokens: its ids and its text."""
    base_ids = svc.codec.encode_prompt("The quick brown fox jumps over the lazy dog. " * 64)
    prompt_ids = base_ids[:prompt_tokens]
    prompt = svc.codec.decode(prompt_ids)  # without a BOS the tokenizer adds back itself
    if svc.codec.encode_prompt(prompt) != prompt_ids:
        raise RuntimeError("the benchmark prompt does not round-trip through the tokenizer")
    return prompt_ids, prompt


def _measure_service(client: Any, req: dict[str, Any],
                     repeats: int) -> tuple[dict[str, float], str]:
    """The service's own timings (median of ``repeats``) and the text of the last run."""
    client.complete(**req)  # warm-up
    svc_runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        body = client.complete(**req).json
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


def _parity(svc_text: str, eager_text: str) -> dict[str, Any]:
    """How many leading characters the service's and eager's greedy texts share."""
    agree = 0
    for a, b in zip(svc_text, eager_text, strict=False):
        if a != b:
            break
        agree += 1
    return {"greedy_prefix_agreement": agree, "of": max(len(svc_text), len(eager_text)),
            "identical": svc_text == eager_text}


def _switches(svc: Any, client: Any, versions: list[str], n: int) -> dict[str, Any]:
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
        "control_p50_ms": _percentile(control, 50), "control_p99_ms": _percentile(control, 99),
        "swap_only_p50_ms": _percentile(swap, 50), "swap_only_p99_ms": _percentile(swap, 99),
        "watcher_p50_ms": _percentile(watched, 50), "watcher_p99_ms": _percentile(watched, 99),
        "watch_interval_ms": svc.config.watch_interval_s * 1000,
    }


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
    from agent.io.bundle_files import is_usable
    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    out = workdir / f"serve-starter-{scheme}-ctx{max_context}"
    if is_usable(out):  # kept from an earlier run, of this bundle format
        return out
    # serving only needs infer.pte; one tiny train method keeps the export short
    opts = ExportOptions(slices=(1,), batch=(1,), max_length=16, max_context=max_context,
                         quantize=scheme)
    t0 = time.monotonic()
    export_bundle(None, out, opts, preset="starter", force=True)
    print(f"exported {out} in {time.monotonic() - t0:.0f} s", flush=True)
    return out


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
            f"{r['switch']['control_p99_ms']:.2f} | {r['switch']['failed_requests']} |")
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
        f"greedy output identical: {r['parity']['identical']} (common prefix "
        f"{r['parity']['greedy_prefix_agreement']}/{r['parity']['of']} characters)",
        f"adapter switches under load: {sw['switches']}, requests during: "
        f"{sw['requests_during']}, failed: {sw['failed_requests']}",
        f"control request p50 {sw['control_p50_ms']:.2f} ms, p99 {sw['control_p99_ms']:.2f} ms;"
        f" swap alone p50 {sw['swap_only_p50_ms']:.2f} ms, p99 {sw['swap_only_p99_ms']:.2f} ms;"
        f" watcher ({sw['watch_interval_ms']:.0f} ms poll) p50 {sw['watcher_p50_ms']:.1f} ms,"
        f" p99 {sw['watcher_p99_ms']:.1f} ms",
        "targets: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in r["targets"].items()),
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from agent.errors import BundleError

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

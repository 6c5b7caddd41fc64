"""What one copy of the weights buys: bundle bytes, resident memory per load step, and speed.

``python -m agent.bench.weights_rss BUNDLE [BUNDLE ...] [--no-weight-cache] [--q 4 --batch 1]``

For each bundle, in a fresh process per measurement (so nothing loaded before counts):

- ``files``: the bytes of each program and of the shared weights file, against the fp32
  weight bytes (parameters × 4);
- ``rss infer`` / ``rss train``: resident memory (PSS) after the imports (the baseline), after
  ``load_program`` and after each ``load_method`` (``prefill``, ``decode``; the P-RGE method
  and ``head_loss``), then after the weights file's mapped pages are let go
  (``release_file_pages``), as the service and the trainer load them (agent/io/runtime.py);
- ``speed``: decode and prefill tokens/s through ``InferProgram`` and the P-RGE step time
  (prge-dual, ``--q``/``--batch``) through ``TrainProgram``.

``--no-weight-cache`` loads without XNNPACK's weight cache (each method packs its own copy, the
layout before bundle format 4). Prints one JSON object per measurement, then a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _rss_mb() -> float:
    """Proportional set size: a file page the process maps twice (each method maps the
    weights file's embedding on its own) counts once, where VmRSS counts it twice."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("Pss not in /proc/self/smaps_rollup")


def _files(bundle: Path) -> dict[str, Any]:
    from agent.io.bundle_files import read_manifest

    m = read_manifest(bundle)
    names = [m.train.program] + ([m.infer.program] if m.infer else [])
    names += [m.weights.file] if m.weights else []
    sizes = {n: (bundle / n).stat().st_size for n in names}
    weight_bytes = m.model.num_params * 4
    total = sum(sizes.values())
    return {"format": m.format_version, "quantize": m.quantize, "bytes": sizes,
            "total_mb": total / MB, "fp32_weights_mb": weight_bytes / MB,
            "total_over_fp32_weights": total / weight_bytes}


def _rss_steps(bundle: Path, which: str, q: int, batch: int, cache: bool) -> dict[str, Any]:
    """Resident memory after each load step, loading as agent/io/runtime.py does."""
    from agent.io import xnnpack_options
    from agent.io.bundle_files import read_manifest, weights_path
    from agent.io.file_pages import release_file_pages
    from agent.io.pybindings import load_program, pybindings

    pybindings()
    base = _rss_mb()
    if cache:
        xnnpack_options.enable_weight_cache()
    m = read_manifest(bundle)
    t0 = time.monotonic()
    data = weights_path(bundle, m)
    check_s = time.monotonic() - t0
    if which == "infer":
        assert m.infer is not None, "a train-only bundle has no infer program"
        path, methods = bundle / m.infer.program, ["prefill", "decode"]
    else:
        shape = m.train.method_for(2 * q, batch)
        assert shape is not None, f"no train method {2 * q}x{batch} in {bundle}"
        path, methods = bundle / m.train.program, [shape.method, m.train.head_method]
    steps: dict[str, float] = {}
    prog = load_program(str(path), None if data is None else str(data))
    steps["load_program"] = _rss_mb() - base
    loaded = []
    for name in methods:
        before = _rss_mb()
        loaded.append(prog.load_method(name))
        steps[name] = _rss_mb() - before
    if data is not None:  # as agent/io/runtime.py does once the methods are loaded
        before = _rss_mb()
        release_file_pages(data)
        steps["release_file_pages"] = _rss_mb() - before
    return {"baseline_mb": base, "steps_mb": steps, "total_mb": _rss_mb() - base,
            "weights_check_s": check_s, "weight_cache": cache}


def _speed(bundle: Path, q: int, batch: int, tokens: int, prompt: int,
           repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from agent.bench.zo import bench_mask
    from agent.core.zo import zo_step
    from agent.io.runtime import InferProgram, TrainProgram

    out: dict[str, Any] = {}
    infer = InferProgram(bundle)
    row = np.zeros(infer.num_params, dtype=np.float32)
    ids = [int(i) % min(256, infer.vocab_size) for i in range(prompt)]
    infer.forward(ids, 0, row)  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        infer.forward(ids, 0, row)
    out["prefill_tok_s"] = prompt * repeats / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(tokens):
        infer.forward([ids[i % prompt]], prompt + i, row)
    out["decode_tok_s"] = tokens / (time.perf_counter() - t0)
    del infer
    train = TrainProgram(bundle, slices=2 * q, batch=batch)
    t = train.max_length
    toks = torch.randint(0, 256, (batch, t))
    mask, b = bench_mask(batch, t), torch.zeros(train.num_params)
    times = []
    for step in range(repeats + 1):  # the first one warms up
        t0 = time.perf_counter()
        zo_step(train, "prge-dual", b, toks, mask, run_seed=0, step=step, q=q, eps=1e-2,
                lr=1e-4)
        times.append(time.perf_counter() - t0)
    out["prge_step_ms"] = 1000 * float(np.median(times[1:]))
    return out


def _child(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle[0])
    cache = not args.no_weight_cache
    if args.child == "speed":
        from agent.io import xnnpack_options

        if not cache:
            xnnpack_options.keep_weight_cache_off()
        result = _speed(bundle, args.q, args.batch, args.tokens, args.prompt, args.repeats)
    else:
        result = _rss_steps(bundle, args.child, args.q, args.batch, cache)
    print(json.dumps(result))


def _run_child(kind: str, bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "agent.bench.weights_rss", str(bundle), "--child", kind,
           "--q", str(args.q), "--batch", str(args.batch), "--tokens", str(args.tokens),
           "--prompt", str(args.prompt), "--repeats", str(args.repeats)]
    if args.no_weight_cache:
        cmd.append("--no-weight-cache")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="+", type=Path)
    p.add_argument("--no-weight-cache", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens timed")
    p.add_argument("--prompt", type=int, default=256, help="prefilled tokens per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["infer", "train", "speed"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    for bundle in args.bundle:
        result: dict[str, Any] = {"bundle": str(bundle), "files": _files(bundle)}
        for kind in ("infer", "train") + (() if args.skip_speed else ("speed",)):
            result[kind] = _run_child(kind, bundle, args)
        print(json.dumps(result), flush=True)
        _table(result)
    return 0


def _table(r: dict[str, Any]) -> None:
    f = r["files"]
    print(f"\n{r['bundle']} (format {f['format']}, {f['quantize']}): "
          f"{f['total_mb']:.0f} MB on disk = {f['total_over_fp32_weights']:.2f}x the fp32 "
          f"weights ({f['fp32_weights_mb']:.0f} MB); "
          + ", ".join(f"{n} {b / MB:.1f} MB" for n, b in f["bytes"].items()))
    for kind in ("infer", "train"):
        s = r[kind]
        steps = ", ".join(f"{n} +{v:.0f}" for n, v in s["steps_mb"].items())
        print(f"  rss {kind}: baseline {s['baseline_mb']:.0f} MB, {steps} -> "
              f"+{s['total_mb']:.0f} MB (weights check {s['weights_check_s']:.2f} s, "
              f"weight cache {'on' if s['weight_cache'] else 'off'})")
    if "speed" in r:
        s = r["speed"]
        print(f"  speed: decode {s['decode_tok_s']:.1f} tok/s, prefill "
              f"{s['prefill_tok_s']:.0f} tok/s, P-RGE step {s['prge_step_ms']:.0f} ms")


if __name__ == "__main__":
    raise SystemExit(main())

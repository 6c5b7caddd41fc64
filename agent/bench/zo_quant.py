"""``mobizo-bench zo-quant``: fp32 vs 8da8w vs 8da4w bases side by side (issue 8).

For one configuration (default: the 110M shape, q = 4, b = 1, seq 128) it exports one
train-only bundle per scheme into ``--workdir`` (once, reused) with the P-RGE dual method
S = 2q and the loss on the response half (``max_targets`` = seq/2, like ``mobizo-bench zo``),
and reports:

- ``t_prge``: median P-RGE dual step time (``agent.core.zo.zo_step``, host work included),
  the schemes' steps interleaved round by round so load drift on a shared machine cancels in
  their ratio;
- ``peak_mb`` / ``load_mb``: resident memory of one P-RGE step above the post-import
  baseline, in a fresh process (``agent.bench.rss_probe prge``);
- ``pte_mb``: the size of ``train.pte`` and ``weights.ptd`` (train-only bundles: no ``infer.pte``);
- ``corr_fp32``: Pearson correlation of the program's projected gradients g_i with the fp32
  eager model's (same seeds, same batch, ε from ``--eps``), over ``--corr-steps`` steps of q
  directions each.

The issue's targets for 8da8w: step ≥ 2× faster than fp32, peak RSS ≤ 0.7× fp32,
correlation ≥ 0.98 at ε = 1e-2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent.core.bundle import QUANT_SCHEMES, QuantScheme

HELP = "fp32 vs 8da8w vs 8da4w base: step time, peak memory, .pte size, g_i fidelity"
SCHEMES = QUANT_SCHEMES
MB = 1024 * 1024


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The P-RGE step whose schemes are compared (also ``mobizo-bench kernels``'s)."""
    p.add_argument("--shape", choices=["starter", "110m"], default="110m")
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_step_arguments(p)
    p.add_argument("--eps", type=float, default=1e-2)
    p.add_argument("--repeats", type=int, default=7, help="timed steps per scheme")
    p.add_argument("--corr-steps", type=int, default=6, help="steps of q g_i each")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path("build/bench"))
    p.add_argument("--json", type=Path, help="write the results as a JSON list here")


def quant_bundle(workdir: Path, shape: str, scheme: QuantScheme, q: int, b: int,
                 seq: int) -> Path:
    """Export (once) a bundle of ``scheme`` with the S = 2q method at batch b."""
    from agent.bench.zo import export_in_child, response_targets
    from agent.io.bundle_files import is_usable
    from exporter.options import ExportOptions

    out = workdir / f"{shape}-{scheme}-q{q}-b{b}-T{seq}-response"
    if is_usable(out):  # kept from an earlier run
        return out
    # train-only: this benchmark never serves, and skipping infer.pte halves the export; the
    # loss window is the response half, as in `mobizo-bench zo` (its default --loss-window)
    opts = ExportOptions(slices=(2 * q,), batch=(b,), max_length=seq, quantize=scheme,
                         train_only=True, max_targets=response_targets(seq))
    t0 = time.monotonic()
    export_in_child(workdir, shape, out, opts)
    print(f"exported {out.name} in {time.monotonic() - t0:.0f} s", flush=True)
    return out


def _batch(manifest, b: int):  # -> (tokens, mask)
    import torch

    from agent.bench.zo import bench_mask

    t = manifest.train.max_length
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, min(256, manifest.model.vocab_size), (b, t), generator=gen)
    return tokens, bench_mask(b, t)  # loss on the second half, like a response


def projected_grads(fn, manifest, q: int, b: int, eps: float, steps: int) -> list[float]:
    """g_i of ``steps`` P-RGE dual steps at B = 0 (seeds 0..steps-1), concatenated."""
    import torch

    from agent.core import zo

    tokens, mask = _batch(manifest, b)
    lora_b = torch.zeros(manifest.lora.num_params)
    out: list[float] = []
    for step in range(steps):
        est = zo.estimate(fn, "prge-dual", lora_b, tokens, mask,
                          seed_t=zo.step_seed(0, step), q=q, eps=eps)
        out.extend(est.projected_grads)
    return out


def step_times(bundles: dict[str, Path], q: int, b: int, repeats: int) -> dict[str, float]:
    """Median P-RGE dual step time per scheme, the schemes' steps interleaved.

    On a shared machine the load drifts over minutes; timing the schemes one after another
    would put that drift into their ratio. Each round runs one step of every scheme (the
    order rotating by round), so every scheme sees the same load on average.
    """
    import statistics

    import torch

    from agent.core.zo import zo_step
    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import TrainProgram

    steppers = {}
    for scheme, bundle in bundles.items():
        m = read_manifest(bundle)
        tokens, mask = _batch(m, b)
        prog = TrainProgram(bundle, slices=2 * q, batch=b)
        steppers[scheme] = _Stepper(prog, torch.zeros(m.lora.num_params), tokens, mask, q,
                                    zo_step)
    for run in steppers.values():
        run()  # warm-up: first calls pay for lazy init and page faults
    samples: dict[str, list[float]] = {s: [] for s in steppers}
    order = list(steppers)
    for r in range(repeats):
        for scheme in order[r % len(order):] + order[: r % len(order)]:
            t0 = time.perf_counter()
            steppers[scheme]()
            samples[scheme].append(time.perf_counter() - t0)
    return {s: statistics.median(v) for s, v in samples.items()}


class _Stepper:
    """One P-RGE dual step per call on its own program, carrying LoRA-B and the step count."""

    def __init__(self, prog, lora_b, tokens, mask, q: int, zo_step) -> None:  # noqa: ANN001
        self.prog, self.lora_b, self.tokens, self.mask, self.q = prog, lora_b, tokens, mask, q
        self.zo_step, self.step = zo_step, 0
        from agent.core.zo import StepBuffers

        self.buffers = StepBuffers()

    def __call__(self) -> None:
        self.lora_b = self.zo_step(self.prog, "prge-dual", self.lora_b, self.tokens, self.mask,
                                   run_seed=0, step=self.step, q=self.q, eps=1e-2,
                                   lr=1e-4, buffers=self.buffers).lora_b
        self.step += 1


def peak_rss(bundle: Path, q: int, b: int) -> dict[str, float]:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "agent.bench.rss_probe", "prge", str(bundle), "--q", str(q),
           "--batch", str(b)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"rss probe failed:\n{res.stderr[-2000:]}")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return {"peak_mb": data["peak_mb"], "load_mb": data["load_mb"]}


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import TrainProgram
    from exporter.reference import EagerTrainProgram, load_base_model

    q, b = args.q, args.batch
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundles = {s: quant_bundle(args.workdir, args.shape, s, q, b, args.seq)
               for s in args.schemes}
    first = read_manifest(next(iter(bundles.values())))
    hf = load_base_model(first, workdir=args.workdir)
    # the fp32 eager reference: the same decoder, unquantized, same LoRA-A (same seed)
    ref_fn = EagerTrainProgram(next(iter(bundles.values())), slices=2 * q, batch=b, hf_model=hf)
    ref = np.array(projected_grads(ref_fn, first, q, b, args.eps, args.corr_steps))
    del ref_fn
    times = step_times(bundles, q, b, args.repeats)
    rows = []
    for scheme, bundle in bundles.items():
        m = read_manifest(bundle)
        row: dict = {"scheme": scheme, "shape": args.shape, "q": q, "b": b, "seq": args.seq,
                     # the program and, from bundle format 4, the weights file it reads
                     "pte_mb": sum((bundle / f).stat().st_size for f in (
                         m.train.program, *([m.weights.file] if m.weights else []))) / MB,
                     "t_prge": times[scheme]}
        got = np.array(projected_grads(TrainProgram(bundle, slices=2 * q, batch=b), m, q, b,
                                       args.eps, args.corr_steps))
        row["corr_fp32"] = float(np.corrcoef(ref, got)[0, 1])
        if not args.skip_rss:
            row.update(peak_rss(bundle, q, b))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["scheme"] == "none"), None)
    print(f"\n{'scheme':8} {'t_prge s':>9} {'speedup':>8} {'peak MB':>8} {'×fp32':>6} "
          f"{'pte MB':>7} {'×fp32':>6} {'corr':>7}")
    for r in rows:
        sp = base["t_prge"] / r["t_prge"] if base else float("nan")
        rss = r.get("peak_mb", float("nan"))
        rss_x = rss / base["peak_mb"] if base and "peak_mb" in base else float("nan")
        pte_x = r["pte_mb"] / base["pte_mb"] if base else float("nan")
        print(f"{r['scheme']:8} {r['t_prge']:9.3f} {sp:8.2f} {rss:8.0f} {rss_x:6.2f} "
              f"{r['pte_mb']:7.1f} {pte_x:6.2f} {r['corr_fp32']:7.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0

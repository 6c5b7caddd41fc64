"""``mobizo-bench zo``: what a P-RGE step costs next to MeZO, a plain forward and eager PyTorch.

Per configuration (shape, q, b, seq, lora-layers) it measures, each as the median of
``--repeats`` runs after a warm-up, all including the host-side work (perturbations drawn
from seeds, the B stacks, the ZO-SGD update — ``agent.core.zo.zo_step``):

- ``t_mezo``: a MeZO step: 2q sequential calls of the S=1 method on b sequences;
- ``t_prge``: a P-RGE dual step: one call of the S=2q method (2q·b rows); ``host_fraction``
  is the part of it spent outside the program (drawing z, the B stack, the update);
- ``t_fwd``: inference over the same 2q·b sequences with one adapter, run the way the
  inference program runs one (unmerged, B a runtime input; bench-only method) — the
  "plain forward" of shared/DESIGN.md §3, so ``overhead_vs_forward`` is what training costs
  over serving the same tokens;
- ``t_fwd_merged``: the same forward with no LoRA at all (an adapter merged into the
  weights), for ``overhead_vs_merged_forward``;
- ``t_eager``: the same P-RGE dual step with the same decoder in eager PyTorch.

and, each in a fresh process (``agent.bench.rss_probe``), peak resident memory above the
process's baseline after imports: an inference forward of b sequences, a P-RGE step, and two
first-order LoRA steps with autograd on q·b sequences: transformers' model with PEFT-style
LoRA and its own loss (what a user would otherwise pick: ``rss_firstorder_over_zo``) and our
export decoder with the loss window (the leanest first-order step: ``rss_firstorder_lean_over_zo``).
It also reports what loading the train program cost in resident memory relative to the
model's weight bytes.

Bundles are exported into ``--workdir`` once per configuration and reused.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HELP = "P-RGE vs MeZO vs plain forward vs eager: step time and peak memory"

# A ~110M-parameter Llama shape (random weights are fine for timing).
SHAPE_110M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=12, vocab_size=32000,
                  max_position_embeddings=2048, tie_word_embeddings=False)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", choices=["starter", "110m"], default="starter")
    p.add_argument("--q", type=_ints, default=[4], help="queries, comma-separated (e.g. 1,4,8)")
    p.add_argument("--batch", type=_ints, default=[1], help="per-query batch, comma-separated")
    p.add_argument("--seq", type=_ints, default=[128], help="sequence lengths, comma-separated")
    p.add_argument("--lora-layers", choices=["all", "last-quarter"], nargs="+",
                   default=["all"])
    p.add_argument("--loss-window", choices=["response", "full"], nargs="+",
                   default=["response"],
                   help="response: the programs score only the response half of each sequence "
                        "(the loss mask, --max-targets seq/2); full: logits at every position")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-rss", action="store_true", help="timings only")
    p.add_argument("--workdir", type=Path, default=Path("build/bench"),
                   help="where checkpoints and bundles are exported and kept")
    p.add_argument("--json", type=Path, help="write the results as a JSON list here")


def make_110m_checkpoint(out: Path, seed: int = 0) -> Path:
    """A random-weight ~110M Llama with the starter's byte tokenizer (saved once)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporter.starter import byte_tokenizer

    tok = byte_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**SHAPE_110M))
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def response_targets(seq: int) -> int:
    """Targets per sequence of the benchmark's mask: the second half, like a response."""
    return seq - seq // 2


def bench_mask(b: int, seq: int):  # -> torch.Tensor
    import torch

    mask = torch.ones(b, seq)
    mask[:, : seq // 2] = 0
    return mask


def bench_bundle(workdir: Path, shape: str, q: int, b: int, seq: int, lora_layers: str,
                 loss_window: str = "response") -> Path:
    """Export (once) a train-only bundle: methods S=1 and S=2q at batch b, the plain forward."""
    from exporter.options import ExportOptions

    out = workdir / f"{shape}-q{q}-b{b}-T{seq}-{lora_layers}-{loss_window}"
    if _has_methods(out, q, b):
        return out
    opts = ExportOptions(slices=(1, 2 * q), batch=(b,), max_length=seq, lora_layers=lora_layers,
                         bench_forward=True, train_only=True,
                         max_targets=response_targets(seq) if loss_window == "response" else None)
    export_in_child(workdir, shape, out, opts)
    return out


def export_in_child(workdir: Path, shape: str, out: Path, opts) -> None:  # noqa: ANN001
    """Export a benchmark bundle of ``shape`` in a fresh process, so the process that then
    times it does not carry the exporter's heap (6 GB for the 110M shape) and threads: timed
    right after an export in the same process, P-RGE steps measured 15–35 % slower."""
    import logging
    import multiprocessing

    level = logging.getLogger().getEffectiveLevel()  # the child logs its progress the same way
    child = multiprocessing.get_context("spawn").Process(
        target=_export, args=(workdir, shape, out, opts, level), name=f"export {out.name}")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"exporting {out} failed in its child process (exit code "
                           f"{child.exitcode}); its error is printed above")


def _export(workdir: Path, shape: str, out: Path, opts, log_level: int) -> None:  # noqa: ANN001
    import logging

    from exporter.export import export_bundle

    logging.basicConfig(level=log_level, format="%(levelname)s %(message)s")

    if shape == "starter":
        export_bundle(None, out, opts, preset="starter", force=True)
    else:
        export_bundle(make_110m_checkpoint(workdir / "ckpt-110m"), out, opts, force=True)


def _has_methods(bundle: Path, q: int, b: int) -> bool:
    """Whether a kept bench bundle is of this format and has every program and method this
    version measures (else it is exported again)."""
    from executorch.runtime import Runtime

    from agent.io.bundle_files import is_usable
    from exporter.export import (
        BENCH_FORWARD_PROGRAM,
        BENCH_INFER_PROGRAM,
        adapter_forward_method_name,
        forward_method_name,
    )

    if not is_usable(bundle):
        return False
    if not (bundle / BENCH_INFER_PROGRAM).is_file() or not (
            bundle / BENCH_FORWARD_PROGRAM).is_file():
        return False
    names = Runtime.get().load_program(bundle / BENCH_FORWARD_PROGRAM).method_names
    return {forward_method_name(2 * q * b), adapter_forward_method_name(2 * q * b)} <= names


def speedup_bound(manifest, q: int) -> float:  # noqa: ANN001 - a BundleManifest
    """MeZO / P-RGE dual matmul FLOPs of one step: ``speedup_vs_mezo`` at equal efficiency.

    Per sequence a block costs T·(its linear weights) and the LM head K·hidden·vocab (only the
    K target positions reach it). MeZO runs every block and the head 2q times; P-RGE dual runs
    the frozen prefix once and the LoRA'd blocks and the head 2q times. Attention, norms and
    the LoRA terms are left out (a few % at T = 128). The first LoRA'd block's frozen q/k/v
    projections read the shared rows, so P-RGE runs them once too (exporter.model's fork).
    Measured ratios can land above it: MeZO's calls of b sequences use the CPU less well than
    P-RGE's 2q·b-row LoRA'd suffix.
    """
    m = manifest.model
    q_out, kv_out = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    qkv = m.hidden_size * (q_out + 2 * kv_out)
    block = 2 * m.hidden_size * (q_out + kv_out) + 3 * m.hidden_size * m.intermediate_size
    t, k = manifest.train.max_length, manifest.train.max_targets
    head = m.hidden_size * m.vocab_size
    prefix = min(manifest.lora.layers) if manifest.lora.layers else m.num_layers
    lora_blocks = m.num_layers - prefix
    forked_qkv = qkv if lora_blocks else 0  # run on the shared rows, not per slice
    mezo = 2 * q * (t * m.num_layers * block + k * head)
    shared = t * (prefix * block + forked_qkv)
    prge = shared + 2 * q * (t * (lora_blocks * block - forked_qkv) + k * head)
    return mezo / prge


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for lazy init and page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_times(bundle: Path, q: int, b: int, repeats: int) -> dict[str, float]:
    import torch

    from agent.core.zo import StepBuffers, zo_step
    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import TrainProgram
    from exporter.export import (
        BENCH_FORWARD_PROGRAM,
        adapter_forward_method_name,
        forward_method_name,
    )
    from exporter.reference import EagerTrainProgram, load_base_model

    m = read_manifest(bundle)
    t = m.train.max_length
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, min(256, m.model.vocab_size), (b, t), generator=gen)
    mask = bench_mask(b, t)
    lora_b = torch.zeros(m.lora.num_params)
    state = {"b": lora_b, "step": 0, "program_s": []}
    buffers = StepBuffers()  # as the trainer does: one set of host buffers for every step

    def step(fn, mode):
        def run():
            r = zo_step(fn, mode, state["b"], tokens, mask, run_seed=0, step=state["step"],
                        q=q, eps=1e-2, lr=1e-4, buffers=buffers)
            state["b"], state["step"] = r.lora_b, state["step"] + 1
            state["program_s"].append(r.estimate.program_seconds)
        return run

    mezo = TrainProgram(bundle, slices=1, batch=b)
    out = {"t_mezo": _median_time(step(mezo, "mezo"), repeats)}
    del mezo
    prge = TrainProgram(bundle, slices=2 * q, batch=b)
    state["program_s"].clear()
    out["t_prge"] = _median_time(step(prge, "prge-dual"), repeats)
    out["t_prge_program"] = statistics.median(state["program_s"][1:])  # without the warm-up
    del prge
    rows = 2 * q * b
    # the adapter forward takes the 2q·b sequences; the merged one repeats its one row inside
    program = bundle / BENCH_FORWARD_PROGRAM
    out["t_fwd"] = _forward_time(program, adapter_forward_method_name(rows), m,
                                 tokens.repeat(2 * q, 1), mask.repeat(2 * q, 1), repeats)
    out["t_fwd_merged"] = _forward_time(program, forward_method_name(rows), m, tokens[:1],
                                        mask[:1], repeats)
    eager = EagerTrainProgram(bundle, slices=2 * q, batch=b,
                              hf_model=load_base_model(m, workdir=bundle.parent))
    out["t_eager"] = _median_time(step(eager, "prge-dual"), repeats)
    return out


def _forward_time(program: Path, method: str, manifest, tokens, mask,  # noqa: ANN001
                  repeats: int) -> float:
    fwd = _ForwardMethod(program, method, manifest)  # loaded here, freed on return
    return _median_time(lambda: fwd(tokens, mask), repeats)


class _ForwardMethod:
    """A method of bench_forward.pte (its loss inside, as a one-method forward), called with a
    zero adapter: ``(tokens, loss_mask) -> per-slice losses``."""

    def __init__(self, program: Path, method: str, manifest) -> None:  # noqa: ANN001
        import torch
        from executorch.runtime import Runtime

        prog = Runtime.get().load_program(program)
        self._m = prog.load_method(method)
        self._keep = prog
        self._k = manifest.train.max_targets
        self._b = torch.zeros(1, manifest.lora.num_params)

    def __call__(self, tokens, mask):
        from agent.core.targets import target_window

        window = target_window(mask, self._k)  # host-side packing, as TrainProgram does
        return self._m.execute([tokens, window.positions, window.weights, self._b])[0]


def measure_rss(bundle: Path, q: int, b: int) -> dict[str, float]:
    """Peak RSS above baseline, each kind in its own fresh process."""
    out = {}
    for kind in ("infer", "prge", "firstorder", "firstorder-hf"):
        cmd = [sys.executable, "-m", "agent.bench.rss_probe", kind, str(bundle),
               "--q", str(q), "--batch", str(b)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"rss probe {kind} failed:\n{res.stderr[-2000:]}")
        data = json.loads(res.stdout.strip().splitlines()[-1])
        for k, v in data.items():
            out[f"{kind.replace('-', '_')}_{k}"] = v
    return out


def main(args: argparse.Namespace) -> int:
    from agent.io.bundle_files import read_manifest

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for seq in args.seq:
        for q in args.q:
            for b in args.batch:
                for ll, lw in itertools.product(args.lora_layers, args.loss_window):
                    t0 = time.monotonic()
                    bundle = bench_bundle(args.workdir, args.shape, q, b, seq, ll, lw)
                    print(f"[{args.shape} q={q} b={b} seq={seq} {ll} {lw}] bundle ready "
                          f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
                    row = {"shape": args.shape, "q": q, "batch": b, "seq": seq,
                           "lora_layers": ll, "loss_window": lw,
                           "max_targets": response_targets(seq) if lw == "response" else seq - 1}
                    row.update(measure_times(bundle, q, b, args.repeats))
                    row["speedup_vs_mezo"] = row["t_mezo"] / row["t_prge"]
                    row["speedup_bound"] = speedup_bound(read_manifest(bundle), q)
                    row["overhead_vs_forward"] = row["t_prge"] / row["t_fwd"]
                    row["overhead_vs_merged_forward"] = row["t_prge"] / row["t_fwd_merged"]
                    row["host_fraction"] = 1.0 - row["t_prge_program"] / row["t_prge"]
                    row["et_vs_eager"] = row["t_prge"] / row["t_eager"]
                    if not args.skip_rss:
                        rss = measure_rss(bundle, q, b)
                        row.update(rss)
                        row["rss_train_over_infer"] = rss["prge_peak_mb"] / rss["infer_peak_mb"]
                        row["rss_firstorder_over_zo"] = (rss["firstorder_hf_peak_mb"]
                                                         / rss["prge_peak_mb"])
                        row["rss_firstorder_lean_over_zo"] = (rss["firstorder_peak_mb"]
                                                              / rss["prge_peak_mb"])
                        row["load_over_weights"] = rss["prge_load_mb"] / rss["prge_weights_mb"]
                    results.append(row)
                    _print_row(row)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _print_row(r: dict) -> None:
    def f(key, fmt="{:.3f}"):
        return fmt.format(r[key]) if key in r else "-"

    print(f"{r['shape']:>7} q={r['q']} b={r['batch']} seq={r['seq']} {r['lora_layers']:>12} "
          f"{r.get('loss_window', 'full'):>8} | "
          f"mezo {f('t_mezo')} s  prge {f('t_prge')} s (host {f('host_fraction', '{:.1%}')})  "
          f"fwd {f('t_fwd')} s  merged fwd {f('t_fwd_merged')} s  "
          f"eager {f('t_eager')} s | mezo/prge {f('speedup_vs_mezo', '{:.2f}')} "
          f"(FLOP ratio {f('speedup_bound', '{:.2f}')})  "
          f"prge/fwd {f('overhead_vs_forward', '{:.2f}')} "
          f"(merged {f('overhead_vs_merged_forward', '{:.2f}')})  "
          f"prge/eager {f('et_vs_eager', '{:.2f}')}  "
          f"rss train/infer {f('rss_train_over_infer', '{:.2f}')}  "
          f"rss 1st-order/zo {f('rss_firstorder_over_zo', '{:.2f}')} "
          f"(lean {f('rss_firstorder_lean_over_zo', '{:.2f}')})  "
          f"load/weights {f('load_over_weights', '{:.2f}')}", flush=True)

"""``mobizo-bench decode-profile``: where a bundle's ``decode`` and ``prefill`` time goes, op by op.

Runs the bundle's ``infer.pte`` methods through the runtime with ExecuTorch's event tracer on
(ETDump) and reads the trace back with ``executorch.devtools.Inspector``: every operator the
program runs outside XNNPACK (portable/optimized kernels, ExecuTorch's LLM ops), every
XNNPACK delegate call, and the XNNPACK operators inside each call (the pip wheel's XNNPACK
backend is built with its profiler). Each method is loaded and traced on its own, so the
trace of one method holds only its own calls. Each method first fills the cache up to
``context`` itself (left out of the medians); then ``decode`` runs at positions
``context..context+steps-1`` (what a reply at that context length costs per token), and
``prefill`` chunks at ``context``; ``prefill_long`` and ``decode_long`` (the masked forms,
where the bundle has them) likewise. Medians per call are printed in ms, grouped by
operator (``#N`` instance numbers dropped), with the LM head (the biggest operator of the
method's last delegate call) on its own row.

Tracing adds a few µs per operator; ``mobizo-bench serve`` measures the untraced speed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HELP = "op-by-op time of a bundle's decode and prefill (ExecuTorch ETDump)"

WARMUP = 3  # traced calls left out of the medians (first-call packing, page faults)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="an exported bundle directory")
    p.add_argument("--context", type=int, default=64,
                   help="tokens already in the cache when decode runs (the prompt length)")
    p.add_argument("--steps", type=int, default=32, help="traced decode calls")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="operator rows printed per method")
    p.add_argument("--json", type=Path, help="write the tables here")


def _trace(bundle: Path, method: str, calls: list[list[Any]], etdump: Path) -> None:
    """Load ``infer.pte`` with the event tracer, run ``method`` on each of ``calls``, and
    write the trace to ``etdump``."""
    from agent.io.bundle_files import read_manifest, weights_path
    from agent.io.llm_ops import load_llm_ops
    from agent.io.pybindings import pybindings
    from agent.io.xnnpack_options import enable_weight_cache

    manifest = read_manifest(bundle)
    assert manifest.infer is not None
    enable_weight_cache()
    c = pybindings()
    load_llm_ops(c)
    weights = weights_path(bundle, manifest)
    program = c._load_program(str(bundle / manifest.infer.program), enable_etdump=True,
                              debug_buffer_size=0, program_verification=c.Verification.Minimal,
                              data_path=None if weights is None else str(weights))
    run = program.load_method(method)
    for inputs in calls:
        run(inputs)
    program.write_etdump_result_to_file(str(etdump))


def _calls(bundle: Path, method: str, context: int, steps: int) -> tuple[list[list[Any]], int]:
    """The inputs of every traced call, and how many lead calls to leave out of the medians.

    The cache is filled first, by the method itself, from position 0 up to ``context``: the
    attention reads those positions, and a never-written cache holds whatever the arena held
    (denormals there made ``custom_sdpa`` 100x slower in a first version of this tool).
    ``decode`` then runs at ``context..context+steps-1``, ``prefill`` ``steps`` chunks at
    ``context``.
    """
    import torch

    from agent.io.bundle_files import read_manifest

    manifest = read_manifest(bundle)
    assert manifest.infer is not None
    spec, vocab = manifest.infer, manifest.model.vocab_size
    chunk = 1 if method.startswith("decode") else spec.prefill_chunk
    if context + chunk + steps > spec.max_context:
        raise ValueError(f"--context {context} + {steps} steps do not fit the bundle's "
                         f"context of {spec.max_context}; lower them")
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(1, manifest.lora.num_params, generator=gen) * 0.01
    fill = list(range(0, context, chunk))
    measured = ([context + i for i in range(steps + WARMUP)] if method.startswith("decode")
                else [context] * (steps + WARMUP))
    calls = []
    for pos in fill + measured:
        ids = torch.randint(0, vocab, (1, chunk), generator=gen)
        calls.append([ids, torch.tensor([pos]), torch.tensor([chunk - 1]), row])
    return calls, len(fill) + WARMUP


def _op_name(name: str) -> str:
    return re.sub(r"\s*#\d+$", "", name).removeprefix("native_call_")


def summarize(etdump: Path, skip: int = WARMUP) -> dict[str, Any]:
    """Per-call medians (ms) from one method's trace, leaving out its first ``skip`` calls:
    the whole call, each operator group, the delegate calls, and the LM head."""
    from executorch.devtools import Inspector

    inspector = Inspector(etdump_path=str(etdump))
    block = next(b for b in inspector.event_blocks if b.name == "Execute")
    ops: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    linears: list[tuple[int, float, str]] = []  # (instruction, ms, group) of XNNPACK linears
    total, delegates, last_delegate = 0.0, 0, -1
    for ev in block.events:
        if ev.perf_data is None or ev.name == "OPERATOR_CALL":  # the op's own event follows
            continue
        ms = statistics.median(ev.perf_data.raw[skip:] or ev.perf_data.raw)
        if ev.name == "Method::execute":
            total = ms
        elif ev.name == "DELEGATE_CALL":
            delegates += 1
            last_delegate = max(last_delegate, ev._instruction_id)
        else:
            key = ("xnnpack " if ev.is_delegated_op else "") + _op_name(ev.name)
            ops[key] += ms
            counts[key] += 1
            if ev.is_delegated_op and "Fully Connected" in ev.name:
                linears.append((ev._instruction_id, ms, key))
    rows = [{"op": k, "calls": counts[k], "ms": v} for k, v in ops.items()]
    in_last = [(ms, key) for inst, ms, key in linears if inst == last_delegate]
    if in_last:  # counted on its own row, not in its linears' group
        head_ms, group = max(in_last)
        row = next(r for r in rows if r["op"] == group)
        row["ms"] -= head_ms
        row["calls"] -= 1
        rows.append({"op": "LM head (last delegate's biggest linear)", "calls": 1,
                     "ms": head_ms})
    rows.sort(key=lambda r: -r["ms"])
    rows.append({"op": "rest (between operators, untraced)", "calls": 0,
                 "ms": max(0.0, total - sum(r["ms"] for r in rows))})
    return {"ms": total, "delegate_calls": delegates, "ops": rows}


def profile(bundle: Path, *, context: int, steps: int, threads: int) -> dict[str, Any]:
    """Trace ``decode``, ``prefill`` and (where the bundle has them) ``prefill_long`` and
    ``decode_long`` of ``bundle``, each in its own program load."""
    from agent.core.bundle import LONG_DECODE_METHOD, LONG_PREFILL_METHOD
    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import size_thread_pool

    size_thread_pool(threads)
    out: dict[str, Any] = {"bundle": str(bundle), "context": context, "threads": threads}
    spec = read_manifest(bundle).infer
    methods = [("decode", steps), ("prefill", max(4, steps // 4))]
    for method, n in ((LONG_PREFILL_METHOD, max(4, steps // 4)), (LONG_DECODE_METHOD, steps)):
        if spec is not None and method in spec.methods:  # the masked forms
            methods.append((method, n))
    with tempfile.TemporaryDirectory() as work:
        for method, n in methods:
            etdump = Path(work) / f"{method}.etdp"
            calls, skip = _calls(bundle, method, context, n)
            _trace(bundle, method, calls, etdump)
            out[method] = summarize(etdump, skip)
    return out


def format_profile(result: dict[str, Any], top: int) -> str:
    lines = [f"{result['bundle']}: context {result['context']}, {result['threads']} threads"]
    for method in ("decode", "prefill", "prefill_long", "decode_long"):
        r = result.get(method)
        if r is None:  # a bundle without the masked forms
            continue
        lines.append(f"  {method}: {r['ms']:.2f} ms per call, {r['delegate_calls']} "
                     "XNNPACK delegate calls")
        lines.append(f"    {'operator':54s} {'per call':>8s} {'ms':>8s} {'share':>6s}")
        for row in r["ops"][:-1][:top] + r["ops"][-1:]:  # the top rows, then "rest"
            share = row["ms"] / r["ms"] if r["ms"] else 0.0
            lines.append(f"    {row['op'][:54]:54s} {row['calls']:8d} {row['ms']:8.3f} "
                         f"{share:6.1%}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = profile(args.bundle, context=args.context, steps=args.steps, threads=args.threads)
    print(format_profile(result, args.top))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0

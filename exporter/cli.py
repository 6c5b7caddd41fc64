"""``mobizo-export``: turn a Hugging Face checkpoint (or the starter preset) into a model bundle."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from agent.core.lora_layout import CANONICAL_TARGETS
from agent.errors import MobizoError
from agent.io.stage_line import stage_logging


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobizo-export", description=__doc__)
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help="local Hugging Face checkpoint dir (config.json, safetensors, tokenizer)")
    p.add_argument("--preset", choices=["starter"],
                   help="export a built-in model instead (starter: small random Llama)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--targets", default=",".join(CANONICAL_TARGETS),
                   help="comma-separated LoRA targets (default: all seven projections)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--lora-layers", default="all", help="all | last-quarter | last-K")
    p.add_argument("--slices", type=_ints, default=(1, 2, 4, 8),
                   help="slice counts S to export (default 1,2,4,8: q up to 4 in dual mode)")
    p.add_argument("--batch", type=_ints, default=(2,),
                   help="per-slice batch sizes b to export (default 2)")
    p.add_argument("--max-length", type=int, default=256, help="training sequence length T")
    p.add_argument("--max-targets", type=int, default=None,
                   help="target tokens per training sequence that reach the LM head (default: "
                        "max-length - 1, all; e.g. the longest response you train on: faster "
                        "when prompts are long)")
    p.add_argument("--head-rows", type=int, default=512,
                   help="target rows per call of the LM head while training (default 512): "
                        "bounds its [rows, vocab] logits, the biggest tensor of a step")
    p.add_argument("--max-context", type=int, default=1024, help="generation context (KV cache)")
    p.add_argument("--prefill-chunk", type=int, default=32)
    p.add_argument("--attention", choices=["llm-ops", "masked"], default="llm-ops",
                   help="infer.pte's attention: ExecuTorch's LLM ops (default; fastest; their "
                        "library needs an ARMv8.1+ CPU on Arm) or a masked matmul over the "
                        "whole cache (any CPU: the Raspberry Pi 4's Cortex-A72)")
    p.add_argument("--backend", choices=["xnnpack", "portable"], default="xnnpack")
    p.add_argument("--quantize", choices=["none", "8da8w", "8da4w"], default="none",
                   help="quantize the frozen base linears and the LM head (LoRA, embeddings "
                        "and norms stay fp32): 8da8w = int8 dynamic activations x int8 "
                        "per-channel weights, 8da4w = x int4 group-32 weights with an int8 LM "
                        "head (xnnpack backend only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-forward", action="store_true",
                   help="also write the benchmark's forward programs (for mobizo-bench zo)")
    p.add_argument("--train-only", action="store_true",
                   help="skip the inference program (benchmark bundles; they cannot serve)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.checkpoint is None) == (args.preset is None):
        print("mobizo-export: give either CHECKPOINT_DIR or --preset starter", file=sys.stderr)
        return 2
    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    try:
        opts = ExportOptions(
            targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
            rank=args.rank, alpha=args.alpha, lora_layers=args.lora_layers,
            slices=args.slices, batch=args.batch, max_length=args.max_length,
            max_context=args.max_context, prefill_chunk=args.prefill_chunk,
            attention=args.attention,
            backend=args.backend, quantize=args.quantize, seed=args.seed,
            bench_forward=args.bench_forward, max_targets=args.max_targets,
            train_only=args.train_only, head_rows=args.head_rows,
        )
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"mobizo-export: invalid options: {msgs}", file=sys.stderr)
        return 2
    try:
        # On a terminal each stage (its log line) is shown live with its elapsed time:
        # lowering takes minutes. Elsewhere (CI, a pipe): the same plain log lines as always.
        with stage_logging(sys.stderr, args.log_level.upper(), "exporter"):
            manifest = export_bundle(args.checkpoint, args.out, opts, preset=args.preset,
                                     force=args.force)
    except MobizoError as exc:
        print(f"mobizo-export: {exc}", file=sys.stderr)
        return 1
    shapes = ", ".join(f"S={s.slices}/b={s.batch}" for s in manifest.train.shapes)
    print(f"wrote {args.out}: {manifest.model.family}, {manifest.model.num_params:,} params, "
          f"LoRA r={manifest.lora.rank} on {len(manifest.lora.layers)} layers "
          f"({manifest.lora.num_params:,} B values), train shapes {shapes}, "
          f"T={manifest.train.max_length} (loss window {manifest.train.max_targets}), "
          + (f"context {manifest.infer.max_context}" if manifest.infer else "train only")
          + (" [random weights]" if manifest.base.random_weights else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

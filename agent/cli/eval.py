"""``mobizo-agent eval``: held-out loss of one or more adapters on a JSONL file.

Scores all adapters in one program call per batch where the bundle exports enough slices
(MP-LoRA). With ``--json`` it prints one JSON object (the daemon's eval gate parses it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "held-out loss of one or more adapters on a JSONL file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapters", type=Path, nargs="+",
                   help="adapter directories (PEFT); the bundle's own adapter/ is the baseline")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--data", type=Path, required=True, help="JSON Lines interactions")
    p.add_argument("--split", choices=("heldout", "train", "all"), default="heldout")
    p.add_argument("--heldout-share", type=float, default=0.1,
                   help="must match the trainer's (default 0.1) to get the same split")
    p.add_argument("--backend", choices=("executorch", "eager"), default="executorch")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    from agent.training.evaluate import evaluate_adapters

    report = evaluate_adapters(args.bundle, args.data, args.adapters, split=args.split,
                               heldout_share=args.heldout_share, backend=args.backend,
                               threads=args.threads)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['split']} loss over {report['examples']} examples "
          f"({report['target_tokens']} target tokens):")
    for name, loss in report["losses"].items():
        print(f"  {loss:.4f}  {name}")
    return 0

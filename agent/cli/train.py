"""``mobizo-agent train``: a one-shot MobiZO fine-tuning job on a bundle and a JSONL file.

On a terminal it shows a progress bar; otherwise it prints one JSON object per step on stdout
(``step``, ``loss``, ``projected_grads``, ``lr``, ``seconds``, ...) and a final
``{"result": ...}`` line. Exit codes: 0 done (adapter written), 2 bad input (nothing done),
75 interrupted (SIGTERM/SIGINT; checkpoint written, run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.core import zo

HELP = "one-shot MobiZO fine-tuning job on a bundle and a JSONL file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--data", type=Path, required=True, help="JSON Lines interactions")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    p.add_argument("--steps", type=int, default=100, help="steps of the whole run (default 100)")
    p.add_argument("--mode", choices=zo.MODES, default="prge-dual",
                   help="mezo: 2q calls/step; prge: 2 calls; prge-dual: 1 call (default)")
    p.add_argument("--q", type=int, default=zo.DEFAULT_Q, help="queries per step (default 4)")
    p.add_argument("--batch", type=int, default=None,
                   help="sequences per query (default: q*b = 16 as in the paper if the bundle "
                   "exports it, else its biggest batch)")
    p.add_argument("--seed", type=int, default=0, help="run seed (data order, perturbations)")
    p.add_argument("--metrics", type=Path, help="append per-step JSON lines to this file")
    p.add_argument("--lr", type=float, default=zo.DEFAULT_LR, help="learning rate (1e-4)")
    p.add_argument("--eps", type=float, default=zo.DEFAULT_EPS, help="perturbation ε (1e-2)")
    p.add_argument("--lr-schedule", choices=zo.SCHEDULES, default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--clip", type=float, default=0.0, help="clip |g_i| (0 = off)")
    p.add_argument("--max-length", type=int, help="truncate sequences (≤ the bundle's length)")
    p.add_argument("--max-seconds", type=float, help="stop (and write the adapter) after this")
    p.add_argument("--burst-steps", type=int, help="run at most this many steps now")
    p.add_argument("--checkpoint-dir", type=Path, help="default: <out>.ckpt")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--init-adapter", type=Path, help="start from this adapter's B")
    p.add_argument("--threads", type=int, help="runtime threads")
    p.add_argument("--backend", choices=("executorch", "eager"), default="executorch",
                   help="executorch (train.pte, default) or eager (the reference)")
    p.add_argument("--heldout-share", type=float, default=0.1, help="held-out fraction (0.1)")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    p.add_argument("--progress", choices=("auto", "bar", "json"), default="auto",
                   help="progress bar (a TTY) or JSON lines (otherwise)")


def _config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from agent.errors import ConfigError
    from agent.training.config import TrainJobConfig

    try:
        return TrainJobConfig(
            bundle=args.bundle, data=args.data, out=args.out, steps=args.steps, mode=args.mode,
            q=args.q, batch=args.batch, seed=args.seed, lr=args.lr, eps=args.eps,
            lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, clip=args.clip,
            max_length=args.max_length, max_seconds=args.max_seconds,
            burst_steps=args.burst_steps, checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every, resume=args.resume,
            init_adapter=args.init_adapter, threads=args.threads, backend=args.backend,
            heldout_share=args.heldout_share, metrics=args.metrics, evaluate=not args.no_eval,
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid training options: {problems}") from exc


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def summary_text(result: Any) -> str:
    """What the job achieved, in one paragraph for a person."""
    lines = [f"{result.status}: steps {result.start_step} → {result.end_step} of "
             f"{result.total_steps} in {result.seconds:.1f} s"]
    if result.heldout_start is not None:
        lines.append(f"held-out loss {_fmt(result.heldout_start)} → {_fmt(result.heldout_final)}")
    if result.train_loss_first is not None:
        lines.append(f"train loss (this run) {_fmt(result.train_loss_first)} → "
                     f"{_fmt(result.train_loss_last)}")
    if result.adapter_dir:
        lines.append(f"adapter written to {result.adapter_dir}")
    if result.status == "interrupted":
        lines.append(f"interrupted ({result.stop_reason}); checkpoint {result.checkpoint}; "
                     "run the same command with --resume to continue")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from agent.training.trainer import run_training

    config = _config(args)
    use_bar = args.progress == "bar" or (args.progress == "auto" and sys.stdout.isatty())
    bar = None

    def on_step(m: dict[str, Any]) -> None:
        nonlocal bar
        if use_bar:
            if bar is None:  # made at the first step, so loading time does not skew its rate
                from tqdm import tqdm

                bar = tqdm(total=config.steps, initial=m["step"] - 1, unit="step",
                           desc=f"{config.mode} q={config.q}", dynamic_ncols=True)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2g}")
        else:
            print(json.dumps(m), flush=True)

    try:
        result = run_training(config, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    if use_bar:
        print(summary_text(result))
    else:
        print(json.dumps({"result": result.as_dict()}, default=str), flush=True)
        print(summary_text(result), file=sys.stderr)
    return result.exit_code

"""``mobizo-agent train``: a one-shot MobiZO fine-tuning job on a bundle and a JSONL file.

On a terminal it shows a progress bar on stderr (steps, ETA, loss); where stderr is not a
terminal (the journal, CI) at most a plain line every 30 s. Where stdout is not a terminal it
prints one JSON object per step on stdout (``step``, ``loss``, ``projected_grads``, ``lr``,
``seconds``, ...) and a final ``{"result": ...}`` line. Exit codes: 0 done (adapter
written), 2 bad input (nothing done), 75 interrupted (SIGTERM/SIGINT; checkpoint written,
run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core import zo_settings as zs
from agent.core.train_job import TrainJob

if TYPE_CHECKING:
    from agent.io.progress import Mode

HELP = "one-shot MobiZO fine-tuning job on a bundle and a JSONL file"

def _job_flag(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """``--<name>`` for the TrainJob field ``name``: help and default come from the model.

    The default is SUPPRESS, so only the flags given reach the model and its own field
    defaults apply (no second copy of them here).
    """
    info = TrainJob.model_fields[name]
    default = info.get_default(call_default_factory=False)
    shown = "" if default is None or "flag" in kw else f" (default {default})"
    flag = kw.pop("flag", "--" + name.replace("_", "-"))
    p.add_argument(flag, dest=name, default=argparse.SUPPRESS,
                   help=kw.pop("help", info.description) + shown, **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", type=Path, default=None,
                   help="read the whole job from this JSON document (what the daemon writes); "
                   "no other job flags with it")
    for name in ("bundle", "data", "out", "checkpoint_dir", "init_adapter", "metrics"):
        _job_flag(p, name, type=Path)
    for name in ("steps", "schedule_steps", "q", "batch", "seed", "warmup_steps", "max_length",
                 "burst_steps", "checkpoint_every", "threads"):
        _job_flag(p, name, type=int)
    for name in ("lr", "eps", "min_lr_ratio", "clip", "max_seconds", "heldout_share"):
        _job_flag(p, name, type=float)
    _job_flag(p, "mode", choices=zs.MODES)
    _job_flag(p, "lr_schedule", choices=zs.SCHEDULES)
    _job_flag(p, "backend", choices=("executorch", "eager"))
    _job_flag(p, "resume", action="store_true")
    _job_flag(p, "evaluate", flag="--no-eval", action="store_false",
              help="skip the held-out evaluation")
    p.add_argument("--progress", choices=("auto", "bar", "log", "json"), default="auto",
                   help="auto: a bar on stderr when it is a terminal, else a plain line every "
                   "30 s, plus JSON lines on stdout when it is not a terminal; bar or log: "
                   "only that; json: only JSON lines (what the daemon reads)")


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The job: read from ``--job``, or built from the flags given.

    Raises:
        ConfigError: a bad job file or flag (named), or ``--job`` mixed with job flags.
    """
    from pydantic import ValidationError

    from agent.errors import ConfigError
    from agent.training.job import field_problems, read_train_job

    given = {k: v for k, v in vars(args).items() if k in TrainJob.model_fields}
    if args.job is not None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            raise ConfigError(f"--job already holds the whole job; drop {flags} (or edit "
                              f"{args.job})")
        return read_train_job(args.job)
    try:
        return TrainJob(**given)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid training options: {field_problems(exc, flag_style=True)}") from exc


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


def progress_plan(choice: str, *, stdout_tty: bool, stderr_tty: bool) -> tuple[Mode, bool]:
    """What a person sees on stderr (``bar``, ``log`` or ``none``) and whether JSON lines go
    to stdout, for ``--progress``.

    ``auto``: a bar when stderr is a terminal, else a plain line at most every 30 s (a journal
    or a CI log never gets carriage returns); JSON lines when stdout is not a terminal (a
    pipe or a file: the machine-readable record, as before).
    """
    if choice == "json":
        return "none", True
    if choice == "bar":
        return "bar", False
    if choice == "log":
        return "log", False
    return ("bar" if stderr_tty else "log"), not stdout_tty


def main(args: argparse.Namespace) -> int:
    from agent.io.progress import Progress, is_terminal, open_progress
    from agent.training.trainer import run_training

    config = job_from_args(args)
    human, json_lines = progress_plan(args.progress, stdout_tty=is_terminal(sys.stdout),
                                      stderr_tty=is_terminal(sys.stderr))
    shown: Progress | None = None

    def on_step(m: dict[str, Any]) -> None:
        nonlocal shown
        if shown is None:  # made at the first step, so loading time does not skew its rate
            shown = open_progress(sys.stderr, config.steps, f"{config.mode} q={config.q}",
                                  mode=human)
        shown.update(int(m["step"]), loss=float(m["loss"]), lr=float(m["lr"]))
        if json_lines:
            print(json.dumps(m), flush=True)

    try:
        result = run_training(config, on_step=on_step)
    finally:
        if shown is not None:
            shown.close()
    if json_lines:
        print(json.dumps({"result": result.as_dict()}, default=str), flush=True)
        print(summary_text(result), file=sys.stderr)
    else:
        print(summary_text(result))
    return result.exit_code

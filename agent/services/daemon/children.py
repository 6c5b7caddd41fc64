"""The two child processes a run starts: the trainer (one burst) and the evaluator.

The daemon itself never imports torch or executorch; it builds these command lines from the
config and the run, and starts them as lowered :class:`ChildJob` s
(:mod:`agent.io.children.process`).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import AgentConfig
from agent.io.children.process import ChildJob, limits_from_training
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.runstate import RunState


def trainer_argv(cfg: AgentConfig, run: RunState, files: RunFiles, python: str) -> list[str]:
    """The trainer's command line for ``run`` (``python -m agent train ... --resume``)."""
    t = cfg.training
    steps = t.steps_per_burst
    argv = [
        python, "-m", "agent", "train",
        "--bundle", str(cfg.bundle_dir),
        "--data", str(files.run_dir / "train.jsonl"),
        "--out", str(files.candidate(run.run_id)),
        "--steps", str(steps),
        "--mode", t.mode, "--q", str(t.q), "--batch", str(t.batch),
        "--seed", str(run.seed), "--lr", repr(t.lr), "--eps", repr(t.eps),
        "--lr-schedule", t.lr_schedule,
        "--warmup-steps", str(min(t.warmup_steps, max(0, steps - 1))),
        "--clip", repr(t.clip),
        "--max-seconds", repr(t.max_seconds_per_burst),
        "--checkpoint-dir", str(files.checkpoint_dir),
        "--checkpoint-every", str(t.checkpoint_every),
        "--resume",
        "--init-adapter", run.init_adapter,
        "--backend", t.backend,
        "--heldout-share", "0", "--no-eval", "--progress", "json",
        "--metrics", str(files.metrics_path),
    ]
    if t.sequence_length:
        argv += ["--max-length", str(t.sequence_length)]
    if cfg.device.threads:
        argv += ["--threads", str(cfg.device.threads)]
    return argv


def eval_argv(cfg: AgentConfig, candidate: Path, against_dir: str, files: RunFiles,
              python: str) -> list[str]:
    """The evaluator's command line: held-out loss of ``candidate`` and ``against_dir``."""
    argv = [python, "-m", "agent", "eval", str(candidate), against_dir,
            "--bundle", str(cfg.bundle_dir), "--data", str(files.run_dir / "heldout.jsonl"),
            "--split", "all", "--backend", cfg.training.backend, "--json"]
    if cfg.device.threads:
        argv += ["--threads", str(cfg.device.threads)]
    return argv


def child_job(cfg: AgentConfig, name: str, argv: list[str], files: RunFiles,
              systemd_run: str | None, job_id: str) -> ChildJob:
    """A child with the [training] resource limits, logging to ``<run dir>/<name>.log``."""
    t = cfg.training
    return ChildJob(name, argv, files.run_dir / f"{name}.log",
                    limits=limits_from_training(t), systemd_run=systemd_run,
                    job_id=job_id, capped=t.memory_max_mb > 0,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})

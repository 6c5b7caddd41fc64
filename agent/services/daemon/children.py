"""The two child processes a run starts: the trainer (one burst) and the evaluator.

The daemon itself never imports torch or executorch; it writes the trainer's job document
(:class:`~agent.core.train_job.TrainJob`) and builds the evaluator's command line from the
config and the run, and starts them as lowered :class:`ChildProcess` s
(:mod:`agent.io.children.process`).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.config import AgentConfig
from agent.core.train_job import MAX_SCHEDULE_OFFSET, TRAIN_JOB_FILE, TrainJob
from agent.io.atomic import atomic_write_text
from agent.io.children.process import ChildProcess, limits_from_training
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.runstate import RunState


def train_job(cfg: AgentConfig, run: RunState, files: RunFiles) -> TrainJob:
    """The job of ``run``'s next burst, from ``[training]`` and the run.

    A run is ``steps_per_burst`` steps (a stopped burst resumes within it from the
    checkpoint); the lr schedule is laid over ``total_steps``, starting at the steps earlier
    runs trained (``run.schedule_offset``, fixed when the run opened).
    """
    t = cfg.training
    return TrainJob(
        bundle=cfg.bundle_dir, data=files.run_dir / "train.jsonl",
        out=files.candidate(run.run_id), steps=t.steps_per_burst, schedule_steps=t.total_steps,
        schedule_offset=min(run.schedule_offset, MAX_SCHEDULE_OFFSET),
        mode=t.mode, q=t.q, batch=t.batch, seed=run.seed, lr=t.lr, eps=t.eps,
        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio,
        clip=t.clip, max_length=t.sequence_length or None,
        max_seconds=t.max_seconds_per_burst, checkpoint_dir=files.checkpoint_dir,
        checkpoint_every=t.checkpoint_every, resume=True, init_adapter=Path(run.init_adapter),
        threads=cfg.device.threads or None, backend=t.backend, heldout_share=0.0,
        metrics=files.metrics_path, evaluate=False,
    )


def write_train_job(job: TrainJob, files: RunFiles) -> Path:
    """Write ``job`` atomically into the run directory; returns its path."""
    path = files.run_dir / TRAIN_JOB_FILE
    atomic_write_text(path, job.model_dump_json(indent=2) + "\n")
    return path


def trainer_argv(cfg: AgentConfig, run: RunState, files: RunFiles, python: str) -> list[str]:
    """The trainer's command line for ``run``: ``python -m agent train --job <file>``.

    Writes the burst's :class:`TrainJob` document into the run directory first.
    """
    job_path = write_train_job(train_job(cfg, run, files), files)
    return [python, "-m", "agent", "train", "--job", str(job_path), "--progress", "json"]


def eval_argv(cfg: AgentConfig, candidate: Path, against_dir: str, files: RunFiles,
              python: str) -> list[str]:
    """The evaluator's command line: held-out loss of ``candidate`` and ``against_dir``."""
    argv = [python, "-m", "agent", "eval", str(candidate), against_dir,
            "--bundle", str(cfg.bundle_dir), "--data", str(files.run_dir / "heldout.jsonl"),
            "--split", "all", "--backend", cfg.training.backend, "--json"]
    if cfg.device.threads:
        argv += ["--threads", str(cfg.device.threads)]
    return argv


def child_process(cfg: AgentConfig, name: str, argv: list[str], files: RunFiles,
              systemd_run: str | None, job_id: str) -> ChildProcess:
    """A child with the [training] resource limits, logging to ``<run dir>/<name>.log``."""
    t = cfg.training
    return ChildProcess(name, argv, files.run_dir / f"{name}.log",
                    limits=limits_from_training(t), systemd_run=systemd_run,
                    job_id=job_id, capped=t.memory_max_mb > 0,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})

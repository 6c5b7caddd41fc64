"""The training job document: one schema from ``agent.toml`` to the trainer child.

The daemon builds a :class:`TrainJob` from ``[training]`` and the run, writes it as JSON into
the run directory, and starts ``python -m agent train --job <file>``; the trainer reads the
same model back. ``mobizo-agent train`` with flags builds it from its flags. Torch-free (the
daemon never imports torch), pure data: reading and writing the file is the callers' job.

``steps`` is the length of the training run: a resumed run ends there. The lr schedule is
laid over ``schedule_steps`` (default ``steps``): the daemon trains ``[training]
steps_per_burst`` steps per run on a schedule ``[training] total_steps`` long, and
``schedule_offset`` says where on it a run starts (the steps its earlier runs trained), so
the schedule runs across runs instead of restarting with each.
``burst_steps`` and ``max_seconds`` only bound this invocation, so they are not part of the
run's identity (:meth:`TrainJob.run_identity`).
The bounds of the fields that ``[training]`` also has are the same as there
(``agent.config.training.TrainingConfig``; a test compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core import zo_settings as zs

RuntimeBackend = Literal["executorch", "eager"]

# Exit codes of the trainer child (`mobizo-agent train`): the contract between the trainer and
# the daemon that starts it, kept here so that neither imports the other.
EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad input: nothing was done (agent.cli's code for a MobizoError)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped early, checkpoint written, run again with --resume

# The most steps a schedule offset counts (the daemon's running total is clamped to it).
MAX_SCHEDULE_OFFSET = 100_000_000

# Where the daemon writes the job of a run's next burst (inside the run directory).
TRAIN_JOB_FILE = "train_job.json"


class TrainJob(BaseModel):
    """Everything a training job needs; every field bounded and described."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    bundle: Path = Field(strict=False, description="model bundle directory (mobizo-export output)")
    data: Path = Field(strict=False, description="JSON Lines file of interactions")
    out: Path = Field(strict=False,
                      description="where the trained adapter (PEFT layout) is written")
    steps: int = Field(default=100, ge=1, le=10_000_000,
                       description="steps of this training run (a resumed run ends here)")
    schedule_steps: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="steps the lr schedule is laid over (the daemon passes [training] "
        "total_steps, of which one run is steps_per_burst); default: steps")
    schedule_offset: int = Field(
        default=0, ge=0, le=MAX_SCHEDULE_OFFSET,
        description="steps earlier runs of this device trained on the same schedule: step t "
        "of this run takes the lr of schedule step schedule_offset + t")
    mode: zs.Mode = Field(default="prge-dual", description="how the 2q losses are batched")
    q: int = Field(default=zs.DEFAULT_Q, ge=1, le=64, description="queries per step")
    batch: int | None = Field(default=None, ge=1, le=256,
                              description="sequences per query (per-query batch b); default: "
                              "q·b = 16 as in the paper if exported, else the biggest "
                              "exported b")
    seed: int = Field(default=0, ge=0, lt=2**63, description="run seed: data order and z_i")
    lr: float = Field(default=zs.DEFAULT_LR, gt=0, le=1.0, description="ZO-SGD learning rate")
    eps: float = Field(default=zs.DEFAULT_EPS, gt=0, le=1.0, description="perturbation scale ε")
    lr_schedule: zs.Schedule = Field(default="constant",
                                     description="lr schedule over `schedule_steps`")
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000,
                              description="linear lr warm-up steps")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="decay floor / lr")
    clip: float = Field(default=0.0, ge=0, description="clip |g_i| to this; 0 = off")
    max_length: int | None = Field(default=None, ge=2, le=8192,
                                   description="truncate sequences to this many tokens "
                                   "(at most the bundle's exported length; default: that)")
    max_seconds: float | None = Field(default=None, gt=0, le=24 * 3600,
                                      description="wall-clock bound of this invocation")
    burst_steps: int | None = Field(default=None, ge=1, le=1_000_000,
                                    description="most steps this invocation runs")
    checkpoint_dir: Path | None = Field(default=None, strict=False,
                                        description="default: <out>.ckpt next to the adapter")
    checkpoint_every: int = Field(default=50, ge=1, le=1_000_000,
                                  description="steps between checkpoints")
    resume: bool = Field(default=False, description="continue from the checkpoint if present")
    init_adapter: Path | None = Field(default=None, strict=False,
                                      description="start from this adapter's B instead of zero")
    threads: int | None = Field(default=None, ge=1, le=256, description="runtime threads")
    backend: RuntimeBackend = Field(default="executorch",
                                    description="executorch (train.pte) or eager (reference)")
    heldout_share: float = Field(default=0.1, ge=0, lt=1, description="held-out fraction")
    metrics: Path | None = Field(default=None, strict=False,
                                 description="append per-step JSON lines here")
    evaluate: bool = Field(default=True, description="held-out loss at start and end")

    @model_validator(mode="after")
    def _check(self) -> TrainJob:
        if self.warmup_steps >= self.horizon and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < the schedule's "
                             f"steps ({self.horizon})")
        return self

    @property
    def horizon(self) -> int:
        """Steps the lr schedule is laid over."""
        return self.schedule_steps or self.steps

    @property
    def slices(self) -> int:
        """Models evaluated per program call (S) for this mode."""
        return zs.slices_for(self.mode, self.q)

    @property
    def checkpoint_path(self) -> Path:
        """Where this job's checkpoints live."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        return self.out.with_name(self.out.name + ".ckpt")

    def run_identity(self) -> dict[str, Any]:
        """The settings that shape the trajectory: a checkpoint resumes only under these."""
        # schedule_steps only when it differs, so older checkpoints keep their identity
        extra: dict[str, Any] = (
            {"schedule_steps": self.horizon} if self.horizon != self.steps else {})
        if self.schedule_offset:
            extra["schedule_offset"] = self.schedule_offset
        return {
            **extra, "steps": self.steps, "mode": self.mode, "q": self.q, "batch": self.batch,
            "seed": self.seed, "lr": self.lr, "eps": self.eps, "lr_schedule": self.lr_schedule,
            "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio,
            "clip": self.clip, "max_length": self.max_length,
            "heldout_share": self.heldout_share,
        }

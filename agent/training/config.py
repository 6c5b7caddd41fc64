"""The configuration of one training job (``mobizo-agent train``), strict pydantic.

``steps`` is the length of the whole run: the lr schedule is laid over it and a resumed run
ends there. ``burst_steps`` and ``max_seconds`` only bound this invocation (the daemon trains
in bursts), so they are not part of the run's identity (:meth:`TrainJobConfig.run_identity`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core import zo

RuntimeBackend = Literal["executorch", "eager"]


class TrainJobConfig(BaseModel):
    """Everything a training job needs; every field bounded and described."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Path = Field(description="model bundle directory (mobizo-export output)")
    data: Path = Field(description="JSON Lines file of interactions")
    out: Path = Field(description="where the trained adapter (PEFT layout) is written")
    steps: int = Field(default=100, ge=1, le=10_000_000,
                       description="steps of the whole run (lr schedule horizon; resume ends here)")
    mode: zo.Mode = Field(default="prge-dual", description="how the 2q losses are batched")
    q: int = Field(default=zo.DEFAULT_Q, ge=1, le=64, description="queries per step")
    batch: int | None = Field(default=None, ge=1, le=256,
                              description="sequences per query (per-query batch b); default: "
                              "q·b = 16 as in the paper if exported, else the biggest "
                              "exported b")
    seed: int = Field(default=0, ge=0, lt=2**63, description="run seed: data order and z_i")
    lr: float = Field(default=zo.DEFAULT_LR, gt=0, le=10.0, description="ZO-SGD learning rate")
    eps: float = Field(default=zo.DEFAULT_EPS, gt=0, le=1.0, description="perturbation scale ε")
    lr_schedule: zo.Schedule = Field(default="constant", description="lr schedule over `steps`")
    warmup_steps: int = Field(default=0, ge=0, description="linear lr warm-up steps")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="decay floor / lr")
    clip: float = Field(default=0.0, ge=0, description="clip |g_i| to this; 0 = off")
    max_length: int | None = Field(default=None, ge=2,
                                   description="truncate sequences to this many tokens "
                                   "(at most the bundle's exported length; default: that)")
    max_seconds: float | None = Field(default=None, gt=0,
                                      description="wall-clock bound of this invocation")
    burst_steps: int | None = Field(default=None, ge=1,
                                    description="most steps this invocation runs")
    checkpoint_dir: Path | None = Field(default=None,
                                        description="default: <out>.ckpt next to the adapter")
    checkpoint_every: int = Field(default=50, ge=1, description="steps between checkpoints")
    resume: bool = Field(default=False, description="continue from the checkpoint if present")
    init_adapter: Path | None = Field(default=None,
                                      description="start from this adapter's B instead of zero")
    threads: int | None = Field(default=None, ge=1, le=256, description="runtime threads")
    backend: RuntimeBackend = Field(default="executorch",
                                    description="executorch (train.pte) or eager (reference)")
    heldout_share: float = Field(default=0.1, ge=0, lt=1, description="held-out fraction")
    metrics: Path | None = Field(default=None, description="append per-step JSON lines here")
    evaluate: bool = Field(default=True, description="held-out loss at start and end")

    @model_validator(mode="after")
    def _check(self) -> TrainJobConfig:
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self

    @property
    def slices(self) -> int:
        return zo.slices_needed(self.mode, self.q)

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir
        return self.out.with_name(self.out.name + ".ckpt")

    def run_identity(self) -> dict[str, Any]:
        """The settings that shape the trajectory: a checkpoint resumes only under these."""
        return {
            "steps": self.steps, "mode": self.mode, "q": self.q, "batch": self.batch,
            "seed": self.seed, "lr": self.lr, "eps": self.eps, "lr_schedule": self.lr_schedule,
            "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio,
            "clip": self.clip, "max_length": self.max_length,
            "heldout_share": self.heldout_share,
        }

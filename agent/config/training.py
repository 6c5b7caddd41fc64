"""[training] section: the MobiZO / P-RGE optimiser and the limits of one burst.

Defaults follow the paper's runs (arXiv 2409.15520 §5: ε = 1e-2, lr 5e-5..1e-4, q × per-query
batch = 16) scaled down to what a small board finishes in one burst.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.base import Section
from agent.config.problems import Problems
from agent.core import zo_settings as zs
from agent.core.train_job import RuntimeBackend

TrainingMode = zs.Mode
LrSchedule = zs.Schedule
# The job document's backend (agent.core.train_job.TrainJob): the bundle's ExecuTorch
# programs, or the eager PyTorch reference (debugging; needs torch in the trainer only).
TrainBackend = RuntimeBackend


class TrainingConfig(Section):
    """How a burst trains: estimator, sizes, step rule, and the burst's bounds."""

    mode: TrainingMode = Field(
        default="prge-dual",
        description="'mezo' = 2q sequential forwards; 'prge' = outer loop (2 calls of q "
        "slices); 'prge-dual' = inner+outer loop (one call of 2q slices)",
    )
    q: int = Field(
        default=zs.DEFAULT_Q, ge=1, le=64, description="random directions (queries) per step"
    )
    batch: int = Field(
        default=2, ge=1, le=256,
        description="sequences per query (per slice); (slices, batch) must be a train method "
        "the bundle exports (mobizo-export's default: batch 2, slices 1/2/4/8)",
    )
    sequence_length: int = Field(
        default=0, ge=0, le=8192,
        description="tokens per training example (longer ones are truncated); 0 = the bundle's "
        "train max_length; must not exceed it",
    )
    eps: float = Field(
        default=zs.DEFAULT_EPS, gt=0, le=1.0, description="ε: perturbation scale"
    )
    lr: float = Field(default=zs.DEFAULT_LR, gt=0, le=1.0, description="ZO-SGD learning rate")
    lr_schedule: LrSchedule = Field(
        default="constant", description="learning-rate schedule over the whole run"
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0, le=1, description="floor of a decaying schedule, as a share of lr"
    )
    warmup_steps: int = Field(
        default=0, ge=0, le=1_000_000, description="linear warm-up steps of the schedule"
    )
    total_steps: int = Field(
        default=2000, ge=1, le=10_000_000,
        description="steps of the whole run the schedule is laid over (bursts resume within it)",
    )
    clip: float = Field(
        default=0.0, ge=0,
        description="clip each projected gradient g_i to [-clip, clip]; 0 = off",
    )
    steps_per_burst: int = Field(
        default=50, ge=1, le=1_000_000, description="most ZO steps in one burst"
    )
    max_seconds_per_burst: float = Field(
        default=600.0, gt=0, le=24 * 3600, description="wall-clock bound of one burst"
    )
    checkpoint_every: int = Field(
        default=50, ge=1, le=1_000_000,
        description="steps between checkpoints (a burst also checkpoints whenever it stops)",
    )
    memory_max_mb: int = Field(
        default=0, ge=0, le=1 << 20,
        description="memory cap of the trainer process (MiB, cgroup MemoryMax / RLIMIT_AS); "
        "0 = no cap",
    )
    nice: int = Field(default=19, ge=0, le=19, description="nice level of the trainer process")
    sched_idle: bool = Field(
        default=True, description="run the trainer with SCHED_IDLE so any user work wins"
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="run seed; step seeds derive from it")
    backend: TrainBackend = Field(
        default="executorch",
        description="'executorch' = the bundle's programs; 'eager' = PyTorch reference (debug)",
    )

    @property
    def slices(self) -> int:
        """Models evaluated per program call (S) for this mode."""
        return zs.slices_for(self.mode, self.q)

    @model_validator(mode="after")
    def _schedule(self) -> TrainingConfig:
        if self.warmup_steps >= self.total_steps:
            raise Problems([(
                "warmup_steps", f"must be < total_steps ({self.total_steps})", self.warmup_steps
            )])
        return self

"""What the daemon keeps on disk between restarts: the run in progress and a little history.

``<state_dir>/run/run.json`` (:class:`RunState`) describes the candidate being trained — its
data snapshot cursor, seed, initial adapter and phase — so a restarted daemon resumes it
instead of starting over; ``<state_dir>/daemon.json`` (:class:`DaemonMemory`) holds what the
policy's history needs (the store cursor of the last finished run, when the last burst
ended). Both are written atomically (temp, fsync, rename) by the daemon.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunState(BaseModel):
    """``<state_dir>/run/run.json``: one candidate in progress (survives restarts)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    seed: int = Field(ge=0)
    init_adapter: str = Field(description="adapter directory the run started from")
    init_version: str = Field(description="its registry version ('initial' = the bundle's)")
    cursor: int = Field(ge=0, description="store change cursor the data snapshot covers")
    n_train: int = 0
    n_heldout: int = 0
    created_at: float
    phase: str = Field(default="training", description="training, evaluating or publishing")
    attempts: int = 0
    failures: int = 0
    steps_done: int = 0
    manual: bool = False
    training_hash: str = Field(default="", description="[training] the run was started under")
    trainer_pid: int | None = Field(default=None, description="pid of the last burst's trainer")
    schedule_offset: int = Field(
        default=0, ge=0, description="steps earlier runs trained: where this run starts on "
        "the [training] total_steps lr schedule (fixed for the run, so its bursts resume "
        "the same checkpoint identity)")
    data_seq: int | None = Field(
        default=None, description="highest store insertion seq when the snapshot was taken "
        "(every row trained on has seq <= it; None: not recorded)")


class DaemonMemory(BaseModel):
    """``<state_dir>/daemon.json``: what the policy's history needs across restarts."""

    model_config = ConfigDict(extra="forbid")

    cursor: int = 0
    last_burst_end: float | None = None
    runs: int = 0
    purge_seen: int = Field(default=0, ge=0, description="last store purge cleaned up after")
    trained_steps: int = Field(default=0, ge=0, description="steps of every finished run so "
                               "far: the next run's lr schedule offset")




def training_hash(training: Any) -> str:
    """Hash of the [training] settings that shape a run's trajectory."""
    data = training.model_dump(mode="json") if hasattr(training, "model_dump") else training
    for key in ("max_seconds_per_burst", "nice", "sched_idle", "memory_max_mb"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]



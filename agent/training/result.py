"""What one training invocation achieved, and the exit codes that tell it to the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.core.train_job import EXIT_INTERRUPTED, EXIT_OK

METRICS_NAME = "training_metrics.json"

Status = Literal["completed", "time_budget", "burst_done", "interrupted"]


@dataclass
class TrainResult:
    """What one invocation achieved."""

    status: Status
    start_step: int
    end_step: int
    total_steps: int
    seconds: float
    heldout_start: float | None = None
    heldout_final: float | None = None
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    adapter_dir: Path | None = None
    checkpoint: Path | None = None
    stop_reason: str = ""
    runtime_threads: int | None = None  # the runtime's thread pool (None: not sized here)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.status == "interrupted" else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["adapter_dir"] = str(self.adapter_dir) if self.adapter_dir else None
        d["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        d["exit_code"] = self.exit_code
        return d

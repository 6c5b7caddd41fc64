"""What one burst has done: read from the trainer's metrics lines, recorded when it ends.

The trainer appends a JSON line per step to the run's metrics file; :class:`BurstProgress`
takes the new ones (:class:`~agent.io.children.process.MetricsTail`), keeps the burst's training
losses, and builds the :class:`~agent.core.status.BurstMetrics` the status shows as the last
burst.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.core.status import BurstMetrics
from agent.io.children.process import MetricsTail


class BurstProgress:
    """The current (or last) burst: its start, its training losses, why it was stopped.

    Args:
        clock: wall clock for the burst's start and end times (shown).
        monotonic: the clock its duration (steps per second) is counted with.
    """

    def __init__(self, clock: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.started = 0.0  # 0: no burst started in this daemon (a run resumed at evaluation)
        self._started_mono = 0.0
        self.start_step = 0
        self.losses: list[float] = []
        self.stop_reason = ""
        self._tail: MetricsTail | None = None

    def watch(self, metrics_path: Path) -> None:
        """Read ``metrics_path`` from its current end: only what the next trainer writes."""
        self._tail = MetricsTail(metrics_path,
                                 metrics_path.stat().st_size if metrics_path.exists() else 0)

    def begin(self, start_step: int) -> None:
        """A trainer started, resuming at ``start_step``."""
        self.started = self.clock()
        self._started_mono = self.monotonic()
        self.start_step = start_step
        self.losses = []
        self.stop_reason = ""

    def new_rows(self) -> list[dict[str, Any]]:
        """The trainer's step lines since the last call (their finite losses are kept)."""
        if self._tail is None:
            return []
        rows = [r for r in self._tail.read() if "step" in r and "loss" in r]
        self.losses += [float(r["loss"]) for r in rows if finite(r.get("loss"))]
        return rows

    @property
    def last_loss(self) -> float | None:
        """The latest finite training loss of the burst."""
        return self.losses[-1] if self.losses else None

    def record(self, outcome: str, reason: str, steps_done: int | None,
               **extra: Any) -> BurstMetrics:
        """How the burst ended, for the status (``steps_done``: the run's; None: no run)."""
        clock = self.clock
        steps = (steps_done - self.start_step) if steps_done is not None else 0
        seconds = max(1e-9, self.monotonic() - self._started_mono) if self.started else None
        return BurstMetrics(
            started_at=self.started or clock(), ended_at=clock(),
            steps=max(0, steps), outcome=outcome, reason=reason[:500],  # type: ignore[arg-type]
            train_loss_start=self.losses[0] if self.losses else None,
            train_loss_end=self.last_loss,
            steps_per_s=(steps / seconds) if seconds and steps > 0 else None, **extra)


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (a metrics line's loss may be NaN or missing)."""
    return isinstance(value, (int, float)) and math.isfinite(value)

"""The daemon's status: kept in memory, written to the status file, sent as systemd STATUS=.

Only the main loop changes it; readers on other threads (the control socket, the fleet link)
read :meth:`StatusReporter.shown`, an immutable model replaced whole, so they never see half
an update.

The file is written only when what it shows changed, and a change of only the reason or the
progress (a step counter, an idle-seconds count in a policy reason) at most once every
``min_interval_s``: an SD card wears with every write, and a status file that follows every
step would be most of the writes of an idle device. A state change, a new burst record, a new
active adapter, other blocking constraints or a disk fault are written at once.

A status write that fails (a full or read-only disk) never raises into the main loop: the
fault is kept in :class:`~agent.io.disk.DiskFaults` and shown in the status (STATUS=, the
control socket, the fleet state), and the write is retried at the same pace until it works.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.core.status import AgentState, AgentStatus
from agent.io.disk import DiskFaults
from agent.io.status_file import status_path, write_status
from agent.io.systemd import Notifier

log = logging.getLogger(__name__)

# Modules the daemon must never import (they belong to the trainer and evaluator children);
# the live status shows any that crept in.
HEAVY_MODULES = ("torch", "executorch")

#: Default shortest time between two writes that change only the reason or the progress.
MIN_WRITE_INTERVAL_S = 10.0


class StatusReporter:
    """Holds the status and publishes its changes.

    Args:
        state_dir: where the status file goes.
        notifier: sd_notify sender (STATUS=).
        clock: wall-clock seconds.
        active_version: the registry's active version (filled in when the status lacks one).
        on_change: called after the status file changed (the fleet link republishes state).
        faults: the disk faults of every write path (shown in the status); a fresh set when
            None.
        min_interval_s: shortest time between writes that change only reason or progress.
        monotonic: seconds for the rate limit (never jumps with the wall clock).
    """

    def __init__(self, state_dir: Path, notifier: Notifier, clock: Callable[[], float],
                 active_version: Callable[[], str],
                 on_change: Callable[[], None] | None = None, *,
                 faults: DiskFaults | None = None,
                 min_interval_s: float = MIN_WRITE_INTERVAL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = state_dir
        self.notifier = notifier
        self.clock = clock
        self.active_version = active_version
        self.on_change = on_change
        self.faults = faults if faults is not None else DiskFaults(clock)
        self.min_interval_s = min_interval_s
        self._monotonic = monotonic
        self.status = AgentStatus(state="idle", reason="starting", since=clock(),
                                  updated_at=clock(), pid=os.getpid(), version=__version__)
        self._written: tuple[Any, ...] | None = None
        self._written_at: float | None = None
        self._headline = ""
        self.writes = 0  # status file writes (tests check the rate limit)

    def set(self, state: AgentState, reason: str, **changes: Any) -> None:
        """Move to ``state`` for ``reason`` (with other fields changed)."""
        now = self.clock()
        try:
            self.status = self.status.to(state, now, reason, **changes)
        except ValueError:
            # e.g. paused -> training: pass through waiting, which every state may enter
            self.status = self.status.to("waiting", now, reason).to(state, now, reason,
                                                                    **changes)

    def update(self, **fields: Any) -> None:
        """Change fields that are not a state transition (last burst, active adapter)."""
        self.status = self.status.model_copy(update=fields)

    def shown(self, *, file: bool = False) -> AgentStatus:
        """The status as others see it: with the disk faults, if any, after the reason.

        ``file``: as the status file shows it: without the status file's own fault (when
        the file can be written, that fault is over).
        """
        faults = [m for m in self.faults.messages() if not (file and m.startswith("status:"))]
        if not faults:
            return self.status
        note = "; ".join(faults)
        reason = f"{self.status.reason} ({note})" if self.status.reason else note
        return self.status.model_copy(update={"reason": reason})

    def publish(self, force: bool = False) -> None:
        """Write the status file and STATUS= if they changed (``force``: write anyway)."""
        if self.status.active_adapter is None:
            self.status = self.status.model_copy(
                update={"active_adapter": self.active_version()})
        shown = self.shown(file=True)
        key = self._key(shown)
        if (force or self._due(key)) and self._write(shown):
            self._written = key
            if self.on_change and not force:
                self.on_change()
        headline = self.shown().headline()
        if force or headline != self._headline:
            self.notifier.status(headline)
            self._headline = headline

    def _key(self, s: AgentStatus) -> tuple[Any, ...]:
        # the first five are written at once when they change; reason and progress are paced
        faults = tuple(m for m in self.faults.messages() if not m.startswith("status:"))
        return (s.state, s.blocked_by, s.last_burst, s.active_adapter, faults, s.reason,
                s.progress)

    def _due(self, key: tuple[Any, ...]) -> bool:
        since = None if self._written_at is None else self._monotonic() - self._written_at
        paced = since is not None and since < self.min_interval_s
        if self.faults.get("status") is not None:
            return not paced  # a failing write is retried at the slow pace only, until it works
        if key == self._written:
            return False
        if self._written is None or key[:5] != self._written[:5]:
            return True  # state, blocking checks, burst record, adapter or a fault changed
        return not paced

    def _write(self, shown: AgentStatus) -> bool:
        """Write the file; on a failure report the fault (never raise). True when written."""
        self._written_at = self._monotonic()
        try:
            write_status(self.state_dir, shown.model_copy(update={"updated_at": self.clock()}))
        except OSError as exc:
            had = self.faults.get("status")
            message = self.faults.report("status", status_path(self.state_dir), exc)
            if had != message:
                log.error("cannot write the status file: %s (%s)", message, exc)
            return False
        self.writes += 1
        if self.faults.get("status") is not None:
            log.info("status file written again")
            self.faults.clear("status")
        return True




def heavy_modules_loaded() -> list[str]:
    """Which of :data:`HEAVY_MODULES` this process has imported (should be none)."""
    return sorted(m for m in HEAVY_MODULES if m in sys.modules)


def rss_kb() -> int | None:
    """This process's resident memory in KiB (None where /proc cannot tell)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None

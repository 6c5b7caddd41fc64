"""The daemon's status: kept in memory, written to the status file, sent as systemd STATUS=.

Only the main loop changes it; readers on other threads (the control socket, the fleet link)
read :attr:`StatusReporter.status`, an immutable model replaced whole, so they never see half
an update. The file and STATUS= are written only when what they show changed, so an idle
daemon does not wake the disk every tick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.core.status import AgentState, AgentStatus
from agent.io.status_file import write_status
from agent.io.systemd import Notifier

# Modules the daemon must never import (they belong to the trainer and evaluator children);
# the live status shows any that crept in.
HEAVY_MODULES = ("torch", "executorch")


class StatusReporter:
    """Holds the status and publishes its changes.

    Args:
        state_dir: where the status file goes.
        notifier: sd_notify sender (STATUS=).
        clock: wall-clock seconds.
        active_version: the registry's active version (filled in when the status lacks one).
        on_change: called after the status file changed (the fleet link republishes state).
    """

    def __init__(self, state_dir: Path, notifier: Notifier, clock: Callable[[], float],
                 active_version: Callable[[], str],
                 on_change: Callable[[], None] | None = None) -> None:
        self.state_dir = state_dir
        self.notifier = notifier
        self.clock = clock
        self.active_version = active_version
        self.on_change = on_change
        self.status = AgentStatus(state="idle", reason="starting", since=clock(),
                                  updated_at=clock(), pid=os.getpid(), version=__version__)
        self._written: tuple[Any, ...] | None = None
        self._headline = ""

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

    def publish(self, force: bool = False) -> None:
        """Write the status file and STATUS= if they changed (``force``: write anyway)."""
        s = self.status
        key = (s.state, s.reason, s.progress, s.last_burst, s.active_adapter, s.blocked_by)
        if force or key != self._written:
            if s.active_adapter is None:
                self.status = s = s.model_copy(update={"active_adapter": self.active_version()})
            write_status(self.state_dir, s.model_copy(update={"updated_at": self.clock()}))
            self._written = key
            if self.on_change and not force:
                self.on_change()
        headline = s.headline()
        if force or headline != self._headline:
            self.notifier.status(headline)
            self._headline = headline


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

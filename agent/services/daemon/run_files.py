"""Where the daemon keeps a run on disk, and what a killed daemon can leave behind.

``<state_dir>/run/`` holds the run in progress: ``run.json`` (:class:`RunState`), its data
snapshot (``train.jsonl``, ``heldout.jsonl``), the trainer's ``metrics.jsonl`` and the
children's logs. ``<state_dir>/daemon.json`` (:class:`DaemonMemory`) outlives runs,
``<state_dir>/candidates/<run id>`` is the adapter a run trains, and ``checkpoint_dir`` the
trainer's resumable checkpoints. JSON state is written atomically (temp, fsync, rename), so a
power cut leaves the old or the new file, never half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.io.atomic import atomic_write_text
from agent.services.daemon.runstate import DaemonMemory, RunState
from agent.services.daemon.snapshot import remove_snapshot

log = logging.getLogger(__name__)

RUN_DIR = "run"
RUN_FILE = "run.json"
MEMORY_FILE = "daemon.json"
CANDIDATES_DIR = "candidates"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class RunFiles:
    """The run's files under ``state_dir`` and the trainer's ``checkpoint_dir``.

    Both directories are fixed for the daemon's lifetime: a reload that changes ``[paths]``
    takes effect on restart only.
    """

    state_dir: Path
    checkpoint_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.state_dir / RUN_DIR

    @property
    def candidates_dir(self) -> Path:
        return self.state_dir / CANDIDATES_DIR

    @property
    def metrics_path(self) -> Path:
        """Where the trainer appends its per-step metrics (JSON lines)."""
        return self.run_dir / METRICS_FILE

    def candidate(self, run_id: str) -> Path:
        """The adapter directory run ``run_id`` trains."""
        return self.candidates_dir / run_id

    def read_memory(self) -> DaemonMemory:
        """``daemon.json``, or a fresh memory when it is missing or unreadable."""
        path = self.state_dir / MEMORY_FILE
        try:
            return DaemonMemory.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return DaemonMemory()
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s (%s)", path, exc)
            return DaemonMemory()

    def write_memory(self, memory: DaemonMemory) -> None:
        atomic_write_text(self.state_dir / MEMORY_FILE, memory.model_dump_json())

    def read_run(self) -> RunState | None:
        """The run a previous daemon left, or None; an unreadable one is discarded."""
        path = self.run_dir / RUN_FILE
        try:
            return RunState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s (%s); starting a new run", path, exc)
            self.discard_run()
            return None

    def write_run(self, run: RunState) -> None:
        atomic_write_text(self.run_dir / RUN_FILE, run.model_dump_json(indent=2))

    def discard_run(self) -> None:
        """Remove the run's state, data snapshot, metrics and checkpoints (not its candidate)."""
        self.clear_checkpoints()
        remove_snapshot(self.run_dir)
        for name in (RUN_FILE, METRICS_FILE):
            (self.run_dir / name).unlink(missing_ok=True)

    def clear_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def remove_candidate(self, run_id: str) -> None:
        shutil.rmtree(self.candidate(run_id), ignore_errors=True)


def reap_orphan_trainer(pid: int | None, checkpoint_dir: Path, grace_s: float) -> None:
    """Stop a trainer a killed daemon left running: two trainers must never write one
    checkpoint directory. Only a process whose command line names our checkpoint
    directory is touched; it gets ``grace_s`` to checkpoint before SIGKILL."""
    if not pid:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if str(checkpoint_dir) not in cmdline or " train " not in f" {cmdline} ":
        return
    log.warning("a trainer of the previous daemon still runs (pid %d); stopping it", pid)
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

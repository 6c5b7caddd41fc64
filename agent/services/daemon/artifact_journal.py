"""The push journal (``<state dir>/artifacts/journal.json``) and recovery at start.

Each step of a push is written here atomically (:func:`agent.io.atomic.atomic_write_text`)
before it is taken: ``staging`` → ``activating`` (what served before) → ``health`` (what the
push activated) → ``committed`` | ``rolled_back`` | ``refused``. A process killed, or a board
that lost power, between ``activating`` and the end finds the journal at its next start and
:func:`recover` rolls back whatever the push activated, so the previous artifact serves again
(Mender's rule: nothing that was not committed survives a reboot). Chunks staged before the
cut are kept for a re-push of the same artifact.

A bundle push is undone in two parts at start: :func:`recover_link` switches the bundle link
back before the daemon opens its adapter registry (which validates against the bundle the
link names), then :func:`recover` activates the adapter that served before the push.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from agent.core.artifact import UNCOMMITTED, ArtifactJournal, ArtifactKind, JournalStep
from agent.io.atomic import atomic_write_text
from agent.io.registry import AdapterRegistry
from agent.services.daemon.artifact_activate import (
    bundle_link,
    restore_adapter,
    revalidate,
    rollback_adapter,
    rollback_bundle,
)

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
JOURNAL_NAME = "journal.json"


def artifacts_root(state_dir: Path) -> Path:
    return Path(state_dir) / ARTIFACTS_DIR


class Journal:
    """Reads and writes the journal file.

    Args:
        path: the journal file.
        clock: wall-clock seconds for ``updated_at``.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock

    def read(self) -> ArtifactJournal | None:
        """The last entry; None when there is none (or it is unreadable: logged)."""
        try:
            return ArtifactJournal.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error("push journal %s unreadable (%s); ignoring it", self.path, exc)
            return None

    def write(self, artifact_id: str, kind: ArtifactKind, step: JournalStep, *,
              job_id: str | None = None, previous: str | None = None, new: str | None = None,
              previous_adapter: str | None = None, reason: str = "") -> ArtifactJournal:
        """Record ``step`` durably (before the step's effect happens)."""
        entry = ArtifactJournal(artifact_id=artifact_id, kind=kind, step=step, job_id=job_id,
                                previous=previous, new=new, previous_adapter=previous_adapter,
                                reason=reason, updated_at=self.clock())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, entry.model_dump_json())
        return entry

    def advance(self, entry: ArtifactJournal, step: JournalStep, **changes: object
                ) -> ArtifactJournal:
        """Record the next step of ``entry`` (its other fields kept unless changed)."""
        values = entry.model_dump()
        values.update(changes, step=step)
        values.pop("updated_at")
        return self.write(**values)


def recover_link(state_dir: Path) -> None:
    """At start, before the registry opens: point the bundle link back at the bundle that
    served before an uncommitted bundle push (the journal is advanced by :func:`recover`)."""
    entry = Journal(artifacts_root(state_dir) / JOURNAL_NAME).read()
    if entry is None or entry.step not in UNCOMMITTED or entry.kind != "bundle":
        return
    try:
        rollback_bundle(bundle_link(state_dir), entry.previous, entry.new)
    except OSError:  # recover() tries again and records the failure
        log.exception("switching the bundle link back after push %s failed", entry.artifact_id)


def recover(state_dir: Path, registry: AdapterRegistry,
            clock: Callable[[], float] = time.time) -> ArtifactJournal | None:
    """At start: roll back a push that activated something and never committed it.

    Returns:
        The journal entry written by the rollback, or None when nothing was to be done.
    """
    journal = Journal(artifacts_root(state_dir) / JOURNAL_NAME, clock)
    entry = journal.read()
    if entry is None or entry.step not in UNCOMMITTED:
        return None
    reason = (f"the agent stopped during the push's {entry.step} step (power loss or kill) "
              "before it was committed")
    try:
        if entry.kind == "adapter":
            if entry.previous is not None:
                rollback_adapter(registry, entry.previous, entry.artifact_id)
        else:
            rollback_bundle(bundle_link(state_dir), entry.previous, entry.new)
            revalidate(registry, bundle_link(state_dir))  # opened before the link moved back?
            restore_adapter(registry, entry.previous_adapter)
    except Exception as exc:  # noqa: BLE001 - logged; the daemon must still start
        log.exception("rolling back the interrupted push %s failed", entry.artifact_id)
        return journal.advance(entry, "rolled_back", reason=f"{reason}; rollback failed: {exc}")
    log.warning("push %s rolled back at start: %s; %s serves", entry.artifact_id, reason,
                entry.previous)
    return journal.advance(entry, "rolled_back", reason=reason)

"""Persistent state of the fleet link (SQLite, WAL): jobs, session sequence, applied config.

Kept apart from the spool because these rows must survive power loss (synchronous=FULL) and
are tiny, whereas the spool is bulk telemetry written often.

:meth:`FleetStore.next_session_seq` runs on the MQTT network thread (the Last Will of every
connect attempt), where an exception would end the thread and the link with it, for good. So
it never raises: a locked, full or read-only ``fleet.db`` gives the next sequence from memory,
the failure is logged and kept in :attr:`FleetStore.error`, and the sequence is written the next
time the file takes writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from pathlib import Path

from agent.core.jobs import Job, JobStatus

log = logging.getLogger(__name__)

#: How long a statement waits for another connection's lock (a reconnect must not hang on it).
BUSY_TIMEOUT_S = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class FleetStore:
    """Jobs and small key/value facts of the link. Thread-safe."""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last_seq = 0  # the last sequence given out (persisted or not)
        self.error: str | None = None  # the last write failure, until a write succeeds again
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._last_seq = int(self.get("session_seq") or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta ----------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def next_session_seq(self) -> int:
        """Increment and return the persisted session sequence (Sparkplug bdSeq).

        Never raises (see the module docstring): when ``fleet.db`` cannot be written, the
        sequence still goes up, in memory, and is persisted by a later call.
        """
        with self._lock:
            try:
                seq = self._persist_next_seq()
            except sqlite3.Error as exc:
                seq = self._last_seq + 1
                self._failed("session sequence", exc)
            else:
                self.error = None
            self._last_seq = seq
        return seq

    def _persist_next_seq(self) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'session_seq'").fetchone()
            # a sequence given out from memory while the file was locked is never reused
            seq = max(int(row[0]) if row else 0, self._last_seq) + 1
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('session_seq', ?)", (str(seq),)
            )
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        return seq

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        """Log a write failure once per distinct reason, and keep it for the status."""
        message = f"fleet store {self.path}: cannot write the {what} ({exc})"
        if message != self.error:
            log.error("%s; continuing from memory, retried at the next write", message)
        self.error = message

    # -- jobs ----------------------------------------------------------------------------
    def insert_job(self, job: Job) -> Job | None:
        """Store a new job; if its id is already known return the stored one instead."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, status, created_at, doc) VALUES (?, ?, ?, ?)",
                (job.job_id, job.status.value, job.created_at, job.model_dump_json()),
            )
            if cur.rowcount == 1:
                return None
            row = self._db.execute(
                "SELECT doc FROM jobs WHERE job_id = ?", (job.job_id,)
            ).fetchone()
        return Job.model_validate_json(row[0])

    def save_job(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, doc = ? WHERE job_id = ?",
                (job.status.value, job.model_dump_json(), job.job_id),
            )

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else Job.model_validate_json(row[0])

    def open_jobs(self) -> list[Job]:
        """Jobs not yet terminal, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM jobs WHERE status IN (?, ?) ORDER BY created_at",
                (JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value),
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def prune_terminal(self, keep: int) -> None:
        """Keep only the newest ``keep`` terminal jobs (ids stay known that long for dedup)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM jobs WHERE status NOT IN (?, ?) AND job_id NOT IN ("
                " SELECT job_id FROM jobs WHERE status NOT IN (?, ?)"
                " ORDER BY created_at DESC LIMIT ?)",
                (
                    JobStatus.QUEUED.value,
                    JobStatus.IN_PROGRESS.value,
                    JobStatus.QUEUED.value,
                    JobStatus.IN_PROGRESS.value,
                    keep,
                ),
            )

    def get_json(self, key: str) -> object | None:
        text = self.get(key)
        return None if text is None else json.loads(text)

    def put_json(self, key: str, value: object) -> None:
        self.put(key, json.dumps(value, sort_keys=True))

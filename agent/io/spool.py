"""Durable offline spool (SQLite, WAL) for what the fleet link could not publish.

Two kinds of entry: the latest ``state`` document (one row, replaced: only the newest state
matters) and telemetry messages (kept in order, bounded by total bytes and by age; the oldest
go first). On reconnect the link publishes the state first, then drains telemetry in order,
deleting rows only after they were handed to the broker, so a crash mid-drain repeats a few
messages rather than losing them (at-least-once).

A write that fails (a full or read-only disk, a locked file) never raises into the fleet
link: the new message is dropped and counted (what was spooled before stays), the reason is
logged once and kept in :attr:`Spool.error`, and the next write tries again.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS latest_state (
    k INTEGER PRIMARY KEY CHECK (k = 0),
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    ts: float
    topic: str
    payload: bytes


class Spool:
    """A bounded, durable FIFO of telemetry plus the latest state. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the spool at ``path``.

        Args:
            path: SQLite file; its directory must exist.
            max_bytes: bound on the summed telemetry topic + payload sizes.
            max_age_s: telemetry older than this is dropped.
            clock: wall clock (injected so tests can age entries).
        """
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the last commit,
        # which for telemetry is an acceptable trade against SD-card wear.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.dropped = 0  # entries evicted by the bounds since open (for telemetry of its own)
        self.failed_writes = 0  # writes refused by the disk since open (the entry is dropped)
        self.error: str | None = None  # the last write failure, until a write succeeds again
        self.path = Path(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Hold the lock for one write; a failed write is logged and counted, never raised."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                self.failed_writes += 1
                message = f"spool {self.path}: cannot write {what} ({exc})"
                if message != self.error:
                    log.error("%s; dropped, the next write tries again", message)
                self.error = message
                return
            self.error = None

    # -- state ----------------------------------------------------------------------------
    def put_state(self, topic: str, payload: bytes) -> None:
        """Remember ``payload`` as the state to publish first on reconnect (replaces any)."""
        with self._writing("the state"):
            self._db.execute(
                "INSERT OR REPLACE INTO latest_state (k, ts, topic, payload) VALUES (0, ?, ?, ?)",
                (self._clock(), topic, payload),
            )

    def peek_state(self) -> SpoolEntry | None:
        with self._lock:
            row = self._db.execute("SELECT ts, topic, payload FROM latest_state").fetchone()
        return None if row is None else SpoolEntry(0, row[0], row[1], bytes(row[2]))

    def clear_state(self, ts: float) -> None:
        """Forget the spooled state if it is still the one stamped ``ts``."""
        with self._writing("the state"):
            self._db.execute("DELETE FROM latest_state WHERE ts = ?", (ts,))

    # -- telemetry ------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes) -> None:
        """Add a telemetry message, then evict by age and size."""
        size = len(topic.encode()) + len(payload)
        with self._writing("telemetry"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO telemetry (ts, topic, payload, size) VALUES (?, ?, ?, ?)",
                    (self._clock(), topic, payload, size),
                )
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        cur = self._db.execute(
            "DELETE FROM telemetry WHERE ts < ?", (self._clock() - self._max_age_s,)
        )
        self.dropped += max(cur.rowcount, 0)
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM telemetry").fetchone()[0]
        if total <= self._max_bytes:
            return
        # Walk from the oldest until enough bytes are freed; one DELETE for the lot.
        excess, cutoff = total - self._max_bytes, None
        for row_id, size in self._db.execute("SELECT id, size FROM telemetry ORDER BY id"):
            excess -= size
            cutoff = row_id
            if excess <= 0:
                break
        if cutoff is not None:
            cur = self._db.execute("DELETE FROM telemetry WHERE id <= ?", (cutoff,))
            self.dropped += max(cur.rowcount, 0)

    def peek(self, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` oldest telemetry entries still within the age bound, in order."""
        with self._writing("the age bound"):
            cur = self._db.execute(
                "DELETE FROM telemetry WHERE ts < ?", (self._clock() - self._max_age_s,)
            )
            self.dropped += max(cur.rowcount, 0)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, topic, payload FROM telemetry ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [SpoolEntry(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def ack(self, up_to_id: int) -> None:
        """Delete every telemetry entry with id <= ``up_to_id`` (it reached the broker)."""
        with self._writing("the drain position"):
            self._db.execute("DELETE FROM telemetry WHERE id <= ?", (up_to_id,))

    def stats(self) -> tuple[int, int]:
        """``(entries, bytes)`` of spooled telemetry."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM telemetry"
            ).fetchone()
        return int(row[0]), int(row[1])

"""The interaction store's one writer thread: queued writes, committed in batches.

Writes go through ONE thread that commits a batch every ``flush_interval_s`` (one fsync per
batch instead of one per request, for SD-card wear; shared/DESIGN.md §5). Queueing never
blocks: above ``max_pending`` a write is dropped and counted. Each write has a
:class:`Ticket` whose ``wait`` returns once the row is committed, so a caller that waits before
answering knows that an interaction the user has seen survives ``kill -9``. Someone waiting
on a ticket ends the batch window at once (what is queued by then still goes in one
commit): a request's answer does not wait ``flush_interval_s`` for writes that may never
come (the service runs one generation at a time, so its inserts rarely share a window).

A batch that cannot be committed (a full or read-only disk, a locked file) is rolled back
whole: what was committed before stays, its tickets say "not stored" (so the service answers
503 instead of "recorded"), the fault goes to :class:`~agent.io.disk.DiskFaults`, and the next
batch tries again, so writes resume by themselves once space returns.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.io import store_retention as retention
from agent.io.disk import DiskFaults, is_disk_fault
from agent.io.store_schema import connect, migrate

log = logging.getLogger(__name__)


class Ticket:
    """Handle for a queued write; :meth:`wait` returns True once it is committed."""

    def __init__(self, accepted: bool = True,
                 hurry: Callable[[], None] | None = None) -> None:
        self._event = threading.Event()
        self.accepted = accepted
        self.error: str | None = None  # why a write that was queued was not committed
        self._hurry = hurry  # asks the writer to commit now: someone waits
        if not accepted:
            self._event.set()

    def _done(self) -> None:
        self._event.set()

    def _fail(self, error: str) -> None:
        self.error = error
        self.accepted = False
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        hurry, self._hurry = self._hurry, None
        if hurry is not None and not self._event.is_set():
            hurry()
        return self._event.wait(timeout) and self.accepted


# (kind, payload, ticket): kind "insert" (payload: the row's columns), "feedback" (payload:
# id, value, correction), "noop" (a flush marker) or "hurry" (end the batch window now).
_Op = tuple[str, Any, Ticket]


class StoreWriter:
    """Owns the writer thread and its connection; started on construction.

    Args:
        path: the database file (already migrated).
        flush_interval_s: a batch is committed at least this often.
        max_pending: queued writes above this are dropped, never blocking.
        max_total_bytes: the oldest rows are evicted above this.
        retention_days: rows older than this are deleted (checked about once a minute).
        clock: seconds since the epoch (row ages, ``feedback_at``).
        faults: where a disk fault of the store is reported (and cleared after a commit).
        clock_synced: whether the wall clock can be trusted for ages (retention waits for it).
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float,
        max_pending: int,
        max_total_bytes: int,
        retention_days: float,
        clock: Callable[[], float],
        faults: DiskFaults | None = None,
        clock_synced: retention.ClockSynced = retention.clock_synced,
    ) -> None:
        self.path = path
        self.clock_synced = clock_synced
        self.faults = faults if faults is not None else DiskFaults(clock)
        self.failed_writes = 0  # writes rolled back by a failed batch (counted, never raised)
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.max_total_bytes = max_total_bytes
        self.retention_days = retention_days
        self._clock = clock
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        # ids queued but not yet committed: they already exist for ``set_feedback``
        self._pending_ids: set[str] = set()
        self._pending_lock = threading.Lock()
        self.dropped_full_queue = 0
        self.evicted = 0
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def enqueue(self, kind: str, payload: Any, pending_id: str | None) -> Ticket:
        """Queue one write (never blocks); ``pending_id`` is an id the write inserts."""
        if self._queue.qsize() >= self.max_pending:
            self.dropped_full_queue += 1
            return Ticket(accepted=False)
        ticket = Ticket(hurry=self._hurry)
        if pending_id is not None:
            with self._pending_lock:
                self._pending_ids.add(pending_id)
        self._queue.put((kind, payload, ticket))
        return ticket

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed."""
        ticket = Ticket(hurry=self._hurry)
        self._queue.put(("noop", None, ticket))
        return ticket.wait(timeout)

    def _hurry(self) -> None:
        """End the current batch window: it follows the waited-for write in the queue."""
        self._queue.put(("hurry", None, Ticket()))

    def is_pending(self, interaction_id: str) -> bool:
        with self._pending_lock:
            return interaction_id in self._pending_ids

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        total = 0
        last_retention = 0.0
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if not batch:
                continue
            error: str | None = None
            try:
                if conn is None:  # at start, or the disk did not let it open before
                    conn = self._open()
                    total = retention.total_bytes(conn)
                total = self._commit(conn, batch, total)
            except sqlite3.Error as exc:
                error = self._failed(exc, len(batch))
            finally:
                for _, _, ticket in batch:
                    if error is None:
                        ticket._done()
                    else:
                        ticket._fail(error)
                with self._pending_lock:
                    for kind, payload, _ in batch:
                        if kind == "insert":
                            self._pending_ids.discard(payload["id"])
            if error is None and conn is not None:
                self.faults.clear("store")
                now = self._clock()
                if abs(now - last_retention) > 60:  # a clock set back must not stall it
                    last_retention = now
                    try:
                        total -= retention.age_out(conn, now, self.retention_days * 86400,
                                                   self.clock_synced)
                    except sqlite3.Error as exc:  # retried in a minute; rows stay meanwhile
                        log.warning("interaction store retention failed: %s", exc)
        if conn is not None:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path)
        try:
            migrate(conn)  # a no-op unless the store could not be opened at start
        except BaseException:
            conn.close()
            raise
        return conn

    def _failed(self, exc: sqlite3.Error, writes: int) -> str:
        """Report a batch that was rolled back; the reason its tickets carry."""
        self.failed_writes += writes
        if is_disk_fault(exc):
            had = self.faults.get("store")
            message = self.faults.report("store", self.path, exc)
            if had != message:
                log.error("interaction store: %s; %d writes not stored", message, writes)
            return message
        log.error("interaction store write failed (%s); %d writes not stored", exc, writes)
        return f"interaction store write failed: {exc}"

    def _next_batch(self) -> tuple[list[_Op], bool]:
        """The writes of the next batch (waiting for the first), and whether to stop after."""
        stop = False
        first = self._queue.get()
        while first is not None and first[0] == "hurry":  # its write went in a past batch
            first = self._queue.get()
        batch: list[_Op] = []
        if first is None:
            return batch, True
        batch.append(first)
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            left = deadline - time.monotonic()
            try:
                op = self._queue.get(timeout=max(left, 0)) if left > 0 else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            if op is None:
                stop = True
                break
            if op[0] == "hurry":  # a caller waits for what is queued before it
                break
            batch.append(op)
        return batch, stop

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op], total: int) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = conn.execute("SELECT COALESCE(MAX(change_seq), 0) FROM interactions")
            change_seq = int(seq.fetchone()[0])
            for kind, payload, _ in batch:
                if kind == "insert":
                    change_seq += 1
                    cols = {**payload, "change_seq": change_seq}
                    conn.execute(
                        f"INSERT OR IGNORE INTO interactions ({','.join(cols)}) "
                        f"VALUES ({','.join('?' * len(cols))})", tuple(cols.values()))
                    total += payload["size_bytes"]
                elif kind == "feedback":
                    change_seq += 1
                    iid, value, correction = payload
                    conn.execute(
                        "UPDATE interactions SET feedback = ?, "
                        "correction = COALESCE(?, correction), feedback_at = ?, change_seq = ? "
                        "WHERE id = ?",
                        (value, correction, self._clock(), change_seq, iid))
            if total > self.max_total_bytes:
                freed, count = retention.evict_oldest(conn, total - self.max_total_bytes)
                self.evicted += count
                total -= freed
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL does): keep the first error
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return total

"""The interaction store's one writer thread: queued writes, committed in batches.

Writes go through ONE thread that commits a batch every ``flush_interval_s`` (one fsync per
batch instead of one per request, for SD-card wear; shared/DESIGN.md §5). Queueing never
blocks: above ``max_pending`` a write is dropped and counted. Each write has a
:class:`Ticket` whose ``wait`` returns once the row is committed, so a caller that waits before
answering knows that an interaction the user has seen survives ``kill -9``.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.io import store_retention as retention
from agent.io.store_schema import connect

log = logging.getLogger(__name__)


class Ticket:
    """Handle for a queued write; :meth:`wait` returns True once it is committed."""

    def __init__(self, accepted: bool = True) -> None:
        self._event = threading.Event()
        self.accepted = accepted
        if not accepted:
            self._event.set()

    def _done(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout) and self.accepted


# (kind, payload, ticket): kind "insert" (payload: the row's columns), "feedback" (payload:
# id, value, correction) or "noop" (a flush marker).
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
    ) -> None:
        self.path = path
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
        ticket = Ticket()
        if pending_id is not None:
            with self._pending_lock:
                self._pending_ids.add(pending_id)
        self._queue.put((kind, payload, ticket))
        return ticket

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed."""
        ticket = Ticket()
        self._queue.put(("noop", None, ticket))
        return ticket.wait(timeout)

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
        conn = connect(self.path)
        total = retention.total_bytes(conn)
        last_retention = 0.0
        stop = False
        while not stop:
            first = self._queue.get()
            batch: list[_Op] = []
            if first is None:
                stop = True
            else:
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
                    batch.append(op)
            if not batch:
                continue
            try:
                total = self._commit(conn, batch, total)
                now = self._clock()
                if now - last_retention > 60:
                    total -= retention.delete_before(conn, now - self.retention_days * 86400)
                    last_retention = now
            except sqlite3.Error:
                log.exception("interaction store write failed; %d writes lost", len(batch))
            finally:
                for _, _, ticket in batch:
                    ticket._done()
                with self._pending_lock:
                    for kind, payload, _ in batch:
                        if kind == "insert":
                            self._pending_ids.discard(payload["id"])
        conn.close()

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
            conn.execute("ROLLBACK")
            raise
        return total

"""The interaction store: every served request, its feedback and corrections, in SQLite.

Nothing in here ever leaves the device. Other components may read *counts* (:meth:`counts`)
and the trainer reads examples (:meth:`examples_since`); content is never reported elsewhere.

This module is the store's public face: its ``[store]`` config, writes handed to the writer
thread, and the read API. The parts: :mod:`agent.io.store_records` (what a row is),
:mod:`agent.io.store_schema` (tables and migrations), :mod:`agent.io.store_writer` (the one
batching writer thread; :meth:`InteractionStore.record` never blocks and returns a
:class:`~agent.io.store_writer.Ticket`), :mod:`agent.io.store_retention` (size cap,
retention) and :mod:`agent.io.store_purge` (purge in batches, incremental vacuum). The
database runs in WAL mode with ``synchronous=NORMAL`` (shared/DESIGN.md §5). Pure stdlib +
pydantic (no torch): the daemon imports it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.io import store_purge
from agent.io.disk import DiskFaults, is_disk_fault_at
from agent.io.store_records import (
    FEEDBACK_VALUE,
    Example,
    Interaction,
    Rating,
    decode_row,
    interaction_from_json,
    is_heldout,
    to_row,
)
from agent.io.store_schema import connect, migrate
from agent.io.store_writer import StoreWriter, Ticket

log = logging.getLogger(__name__)

DB_NAME = "interactions.sqlite3"
Split = Literal["train", "heldout", "all"]


class StoreConfig(BaseModel):
    """[store] section: capture switch, caps and retention of the interaction store."""

    model_config = ConfigDict(extra="forbid")

    capture: bool = Field(default=True, description="record interactions at all")
    max_record_bytes: int = Field(
        default=256 * 1024, ge=256, description="larger interactions are not stored (counted)"
    )
    max_total_bytes: int = Field(
        default=256 * 1024 * 1024, ge=4096, description="oldest rows are evicted above this"
    )
    retention_days: float = Field(default=90.0, gt=0, description="rows older than this go")
    flush_interval_s: float = Field(
        default=0.02, gt=0, le=5, description="writer commits a batch at least this often"
    )
    max_pending: int = Field(
        default=10_000, ge=1, description="queued writes above this are dropped, never blocking"
    )
    heldout_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="share of examples kept out of training, by id"
    )


class InteractionStore:
    """SQLite interaction store with a batching writer thread.

    Args:
        path: the database file (``state_dir/interactions.sqlite3``).
        config: caps, retention and flush interval.
        clock: seconds since the epoch; injected so tests can age rows.
        faults: where a write that failed on a full or read-only disk is reported.
    """

    def __init__(
        self,
        path: Path,
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        faults: DiskFaults | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self.config = config or StoreConfig()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.faults = faults if faults is not None else DiskFaults(clock)
        self._read: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        try:
            self._read = _open(self.path)
        except sqlite3.Error as exc:
            if not is_disk_fault_at(exc, self.path):
                raise
            # A full card cannot even create the WAL index: start anyway (a daemon that
            # exits here crash-loops); reads raise until the file opens, writes are refused.
            log.error("interaction store: %s; opened when there is room",
                      self.faults.report("store", self.path, exc))
        self.dropped_oversize = 0
        self._closed = False
        self._writer = StoreWriter(
            self.path,
            flush_interval_s=self.config.flush_interval_s,
            max_pending=self.config.max_pending,
            max_total_bytes=self.config.max_total_bytes,
            retention_days=self.config.retention_days,
            clock=clock,
            faults=self.faults,
        )

    @classmethod
    def in_state_dir(cls, state_dir: Path, config: StoreConfig | None = None) -> InteractionStore:
        return cls(Path(state_dir) / DB_NAME, config)

    # --- writes (non-blocking) ------------------------------------------------------------

    def record(self, interaction: Interaction) -> Ticket:
        """Queue one interaction; never blocks. Dropped (ticket not accepted) if over caps."""
        if not self.config.capture or self._closed:
            return Ticket(accepted=False)
        row = to_row(interaction)
        if row["size_bytes"] > self.config.max_record_bytes:
            self.dropped_oversize += 1
            log.warning("interaction %s not stored: %d bytes > max_record_bytes %d",
                        interaction.id, row["size_bytes"], self.config.max_record_bytes)
            return Ticket(accepted=False)
        return self._writer.enqueue("insert", row, interaction.id)

    def set_feedback(self, interaction_id: str, rating: Rating | None,
                     correction: str | None = None) -> Ticket:
        """Queue feedback for a known id; raises KeyError if the id is unknown."""
        if not self.exists(interaction_id):
            raise KeyError(interaction_id)
        value = FEEDBACK_VALUE[rating]
        return self._writer.enqueue("feedback", (interaction_id, value, correction), None)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed."""
        return self._writer.flush(timeout)

    @property
    def pending(self) -> int:
        return self._writer.pending

    @property
    def dropped_full_queue(self) -> int:
        return self._writer.dropped_full_queue

    @property
    def evicted(self) -> int:
        return self._writer.evicted

    @property
    def write_error(self) -> str | None:
        """Why writes fail now (a full or read-only disk), or None while they succeed."""
        return self._writer.faults.get("store")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        if self._read is not None:
            self._read.close()

    def __enter__(self) -> InteractionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """The read connection, opened now if the disk did not let it open before (under
        ``_read_lock``); raises the sqlite3 error while it still cannot."""
        if self._read is None:
            self._read = _open(self.path)
            log.info("interaction store %s opened", self.path)
            self.faults.clear("store")
        return self._read

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._conn().execute(sql, tuple(args)).fetchall()

    def exists(self, interaction_id: str) -> bool:
        if self._writer.is_pending(interaction_id):
            return True
        return bool(self._query("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)))

    def get(self, interaction_id: str) -> dict[str, Any] | None:
        """One row as a dict (``messages`` decoded), or None."""
        rows = self._rows("WHERE id = ?", (interaction_id,))
        return rows[0] if rows else None

    def _rows(self, where: str = "", args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            cur = self._conn().execute(f"SELECT * FROM interactions {where}", tuple(args))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return [decode_row(row) for row in out]

    def iter_rows(self, batch: int = 500) -> Iterable[dict[str, Any]]:
        """Every row, oldest first (for ``data export``)."""
        last = 0
        while True:
            rows = self._rows("WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch))
            if not rows:
                return
            yield from rows
            last = rows[-1]["seq"]

    def examples_since(
        self, cursor: int = 0, *, split: Split = "train", limit: int = 10_000
    ) -> tuple[list[Example], int]:
        """Training examples changed after ``cursor``, and the cursor to pass next time.

        Targets: a correction when there is one; otherwise the served response if it was
        rated up, or an imported response that was not rated down. Unrated served responses
        are the model's own output and teach it nothing, so they are skipped. Within one call
        examples with the same input keep only the newest (de-duplication).
        """
        top = int(self._query("SELECT COALESCE(MAX(change_seq), 0) FROM interactions")[0][0])
        rows = self._rows(
            "WHERE change_seq > ? AND change_seq <= ? AND (correction IS NOT NULL OR "
            "feedback = 1 OR (source = 'import' AND (feedback IS NULL OR feedback = 1))) "
            "ORDER BY change_seq LIMIT ?", (cursor, top, limit))
        # a full page resumes after its last row; otherwise everything up to ``top`` was seen
        new_cursor = rows[-1]["change_seq"] if len(rows) == limit else max(cursor, top)
        by_input: dict[str, Example] = {}
        for r in rows:
            if split != "all" and is_heldout(r["id"], self.config.heldout_fraction) != (
                split == "heldout"
            ):
                continue
            target = r["correction"] if r["correction"] is not None else r["response"]
            by_input[r["input_sha"] or r["id"]] = Example(
                r["id"], target, r["messages"], r["prompt"], r["change_seq"])
        return sorted(by_input.values(), key=lambda e: e.change_seq), new_cursor

    def counts(self) -> dict[str, Any]:
        """Counts only, never content: safe to report to the daemon and the fleet."""
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(feedback = 1), 0), COALESCE(SUM(feedback = -1), 0),"
            " COALESCE(SUM(correction IS NOT NULL), 0), COALESCE(SUM(size_bytes), 0),"
            " MAX(created_at), COALESCE(MAX(change_seq), 0) FROM interactions")[0]
        return {
            "interactions": int(row[0]), "feedback_up": int(row[1]),
            "feedback_down": int(row[2]), "corrections": int(row[3]), "bytes": int(row[4]),
            "last_activity": row[5], "change_seq": int(row[6]), "pending": self.pending,
            "dropped_oversize": self.dropped_oversize,
            "dropped_full_queue": self.dropped_full_queue, "evicted": self.evicted,
        }

    def last_activity(self) -> float | None:
        latest = self._query("SELECT MAX(created_at) FROM interactions")[0][0]
        return None if latest is None else float(latest)

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, before: float | None = None) -> int:
        """Delete every row (or those created before ``before``); returns rows deleted.

        Runs in short batches on its own connection (:mod:`agent.io.store_purge`): reads and
        the writer thread go on meanwhile, so a purge of a large store never stops serving.
        """
        self.flush()
        return store_purge.purge(self.path, before, clock=self._clock).rows

    def purges_after(self, purge_id: int) -> tuple[int, int | None]:
        """``(newest purge id, lowest insertion seq purged since purge_id)``; None: none."""
        with self._read_lock:
            return store_purge.purges_after(self._conn(), purge_id)

    def last_seq(self) -> int:
        """The highest insertion seq ever given (every row stored so far has seq <= it)."""
        row = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'")
        return int(row[0][0]) if row else 0

    def import_rows(self, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Insert trainer-format dicts (prompt/response/feedback/correction/messages).

        Returns (imported, skipped as duplicates). Raises DataError on an unusable row.
        """
        known = {r[0] for r in self._query("SELECT input_sha || response FROM interactions")}
        tickets, imported, skipped = [], 0, 0
        for n, raw in enumerate(rows, 1):
            item = interaction_from_json(raw, where=f"row {n}")
            key = item.input_sha() + item.response
            if key in known:
                skipped += 1
                continue
            known.add(key)
            tickets.append(self.record(item))
            imported += 1
        self.flush(timeout=120)
        return imported, skipped


def _open(path: Path) -> sqlite3.Connection:
    """A migrated connection to the store at ``path``."""
    conn = connect(path)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn

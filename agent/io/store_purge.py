"""Purging the interaction store without stopping the device: small batches, then small vacuums.

A purge used to be one ``DELETE`` and one ``VACUUM`` under the store's read lock: on an SD card
that held the lock the daemon's main loop needs for longer than its watchdog, and blocked
every write of the inference service. Here a purge runs on its own connection and

1. fixes the newest row it will delete (``MAX(seq)`` at the start), so rows written while it
   runs are never chased;
2. deletes in batches of ``batch_rows`` rows, each its own short write transaction together
   with a row in ``purges`` that records the insertion-``seq`` range it deleted, so a purge
   cut short by a power loss is recorded exactly as far as it went; between batches the
   store's writer and readers get their turn;
3. hands the freed pages back to the filesystem with ``PRAGMA incremental_vacuum`` in steps of
   ``vacuum_pages`` (files created before ``auto_vacuum=INCREMENTAL`` are converted by one
   VACUUM at their first purge), and truncates the WAL.

``secure_delete`` (set on every store connection, :func:`agent.io.store_schema.connect`) zeroes
the deleted content in the database pages; the WAL frames that still held it are dropped by the
final checkpoint. The ``purges`` log is what the daemon reads to remove the run snapshot,
checkpoints and adapters trained on purged rows (:mod:`agent.services.daemon.purge_cleanup`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.io.store_schema import connect

log = logging.getLogger(__name__)

#: Rows deleted per write transaction (short enough for the writer's flush interval on SD).
BATCH_ROWS = 500
#: Pages handed back per incremental-vacuum step.
VACUUM_PAGES = 256


@dataclass(frozen=True)
class PurgeResult:
    """What one purge deleted: rows, and the insertion-``seq`` range they came from."""

    rows: int
    first_seq: int | None
    last_seq: int | None


def purge(
    path: Path,
    before: float | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
    vacuum_pages: int = VACUUM_PAGES,
    clock: Callable[[], float] = time.time,
) -> PurgeResult:
    """Delete every row (or those created before ``before``) in short batches, then reclaim.

    Args:
        path: the store's database file.
        before: epoch seconds; None deletes every row stored when the purge began.
        batch_rows: rows per write transaction.
        vacuum_pages: pages per incremental-vacuum step.
        clock: seconds since the epoch (the ``purges`` log).
    """
    conn = connect(path)
    try:
        top = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM interactions").fetchone()[0])
        cond, args = ("AND created_at < ?", (before,)) if before is not None else ("", ())
        rows, first, last = 0, None, None
        while True:
            done = _delete_batch(conn, top, cond, args, batch_rows, clock)
            if done is None:
                break
            rows += done[0]
            first = done[1] if first is None else min(first, done[1])
            last = done[2] if last is None else max(last, done[2])
            time.sleep(0)  # let the writer thread take the lock between batches
        reclaim(conn, vacuum_pages)
    finally:
        conn.close()
    log.info("purged %d interactions%s", rows, "" if before is None else " (older than cutoff)")
    return PurgeResult(rows, first, last)


def _delete_batch(conn: sqlite3.Connection, top: int, cond: str, args: tuple[float, ...],
                  batch_rows: int, clock: Callable[[], float]) -> tuple[int, int, int] | None:
    """One transaction: the next ``batch_rows`` matching rows and their log row; None: none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        seqs = [r[0] for r in conn.execute(
            f"SELECT seq FROM interactions WHERE seq <= ? {cond} ORDER BY seq LIMIT ?",
            (top, *args, batch_rows))]
        if not seqs:
            conn.execute("COMMIT")
            return None
        lo, hi = seqs[0], seqs[-1]
        conn.execute(f"DELETE FROM interactions WHERE seq BETWEEN ? AND ? {cond}",
                     (lo, hi, *args))
        conn.execute("INSERT INTO purges (at, rows, first_seq, last_seq) VALUES (?, ?, ?, ?)",
                     (clock(), len(seqs), lo, hi))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return len(seqs), lo, hi


def reclaim(conn: sqlite3.Connection, vacuum_pages: int = VACUUM_PAGES) -> None:
    """Hand free pages back in small steps and truncate the WAL (best effort: on a full disk
    the rows are gone already; the space comes back at the next purge)."""
    try:
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 0:
            # a file from before INCREMENTAL: one VACUUM converts it (this purge only)
            log.info("converting the interaction store to incremental vacuum (once)")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        for _ in range(free // vacuum_pages + 1):  # bounded: writers may free pages meanwhile
            # executescript steps the pragma to its end (execute frees one page per step)
            conn.executescript(f"PRAGMA incremental_vacuum({int(vacuum_pages)});")
            time.sleep(0)
        # A TRUNCATE checkpoint holds off writers while it waits for readers: wait briefly
        # only; a busy one is simply not truncated now (the WAL is reused from its start).
        conn.execute("PRAGMA busy_timeout=500")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("interaction store: purged rows are deleted, but their space was not "
                    "reclaimed yet (%s)", exc)


def purges_after(conn: sqlite3.Connection, purge_id: int) -> tuple[int, int | None]:
    """``(newest purge id, lowest seq deleted by purges after purge_id)``; None: none since."""
    row = conn.execute(
        "SELECT MAX(id), MIN(first_seq) FROM purges WHERE id > ?", (purge_id,)).fetchone()
    if row[0] is None:
        return purge_id, None
    return int(row[0]), int(row[1])

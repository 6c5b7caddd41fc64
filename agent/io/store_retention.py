"""Keeping the interaction store bounded: the size cap, retention by age, and purge.

The writer thread applies the cap inside each batch's transaction and retention about once a
minute (:mod:`agent.io.store_writer`); purge is the user's (or the fleet's) explicit delete.
Sizes are the ``size_bytes`` column, the content's bytes plus a fixed per-row overhead.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)


def total_bytes(conn: sqlite3.Connection) -> int:
    return int(conn.execute(
        "SELECT COALESCE(SUM(size_bytes), 0) FROM interactions").fetchone()[0])


def evict_oldest(conn: sqlite3.Connection, excess: int) -> tuple[int, int]:
    """Delete the oldest rows until ``excess`` bytes are gone; returns (bytes freed, rows)."""
    freed, cutoff, count = 0, None, 0
    for seq, size in conn.execute("SELECT seq, size_bytes FROM interactions ORDER BY seq"):
        freed += size
        cutoff = seq
        count += 1
        if freed >= excess:
            break
    if cutoff is not None:
        conn.execute("DELETE FROM interactions WHERE seq <= ?", (cutoff,))
        log.info("store over max_total_bytes: evicted %d oldest interactions", count)
    return freed, count


def delete_before(conn: sqlite3.Connection, cutoff: float) -> int:
    """Delete rows created before ``cutoff`` (epoch seconds); returns the bytes freed."""
    row = conn.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM interactions "
                       "WHERE created_at < ?", (cutoff,)).fetchone()
    conn.execute("DELETE FROM interactions WHERE created_at < ?", (cutoff,))
    return int(row[0])


def purge(conn: sqlite3.Connection, before: float | None = None) -> int:
    """Delete every row (or those created before ``before``); returns rows deleted."""
    where, args = ("WHERE created_at < ?", (before,)) if before is not None else ("", ())
    n = conn.execute(f"SELECT COUNT(*) FROM interactions {where}", args)
    count = int(n.fetchone()[0])
    conn.execute(f"DELETE FROM interactions {where}", args)
    # reclaim the space so deleted content is really gone from the file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    return count

"""Keeping the interaction store bounded: the size cap and retention by age.

The writer thread applies the cap inside each batch's transaction and retention about once a
minute (:mod:`agent.io.store_writer`); purge, the user's (or the fleet's) explicit delete,
is :mod:`agent.io.store_purge`.
Sizes are the ``size_bytes`` column, the content's bytes plus a fixed per-row overhead.

Retention counts ages on the wall clock (``created_at`` is a timestamp people read), so it
waits for a clock it can trust: a board without an RTC boots in 1970, stamps its new rows
in 1970, and at NTP sync every one of them would look 56 years old. :func:`age_out` does
nothing while the clock is unsynced (:func:`clock_synced`), and at the first synced pass
re-stamps rows stamped before :data:`CLOCK_FLOOR` with the present, so their age counts
from then. A clock set back later only pauses retention again.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# No wall clock that has ever been synced reads earlier than this release's build
# (2025-01-01T00:00:00Z): a time before it comes from a board that has not synced yet.
CLOCK_FLOOR = 1_735_689_600.0
# systemd-timesyncd creates this file once the clock is synchronized (until it is, the
# directory may exist without it); see systemd-timesyncd.service(8).
TIMESYNC_MARKER = Path("/run/systemd/timesync/synchronized")

ClockSynced = Callable[[float], bool]
"""Whether the wall clock that read ``now`` can be trusted for ages (injectable)."""


def clock_synced(now: float, marker: Path = TIMESYNC_MARKER) -> bool:
    """Whether ``now`` (epoch seconds) comes from a synced clock.

    Not before :data:`CLOCK_FLOOR`; and where systemd-timesyncd runs (its runtime directory
    exists), only once it has written its ``synchronized`` marker. Without timesyncd
    (chrony, an RTC, a container) the floor alone decides.
    """
    if now < CLOCK_FLOOR:
        return False
    return not marker.parent.is_dir() or marker.exists()


def age_out(conn: sqlite3.Connection, now: float, max_age_s: float,
            synced: ClockSynced = clock_synced) -> int:
    """Retention by age: delete rows older than ``max_age_s``; returns the bytes freed.

    Nothing happens while ``synced(now)`` is false. Rows stamped by an unsynced clock
    (before :data:`CLOCK_FLOOR`) get ``now`` as their time first, so they are kept for a
    full ``max_age_s`` from the sync rather than deleted by it.
    """
    if not synced(now):
        return 0
    restamped = conn.execute("UPDATE interactions SET created_at = ? WHERE created_at < ?",
                             (now, CLOCK_FLOOR)).rowcount
    if restamped:
        log.info("the clock is synced: %d interactions stamped before it count their age "
                 "from now", restamped)
    return delete_before(conn, now - max_age_s)


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

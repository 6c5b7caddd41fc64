"""Retention and an unsynced wall clock: 1970 at boot, now at NTP sync, then set back.

A board without an RTC boots in 1970 and stamps its rows then; a retention that trusted that
clock would delete every fresh row at the first NTP sync. Real SQLite in ``tmp_path``; the
clock and the sync signal are fakes (the hardware edge).
"""

from __future__ import annotations

from pathlib import Path

from agent.io import store_retention as retention
from agent.io.store_records import Interaction, to_row
from agent.io.store_schema import connect, migrate
from agent.io.store_writer import StoreWriter

DAY = 86400.0
BOOT_1970 = 1_000.0  # seconds after the epoch: what an RTC-less board reads at boot
NOW = 1_800_000_000.0  # a synced clock (2027)


def _ages(path: Path) -> dict[str, float]:
    conn = connect(path)
    try:
        return dict(conn.execute("SELECT id, created_at FROM interactions").fetchall())
    finally:
        conn.close()


def _writer(path: Path, clock: list[float]) -> StoreWriter:
    conn = connect(path)
    migrate(conn)
    conn.close()
    return StoreWriter(path, flush_interval_s=0.01, max_pending=100, max_total_bytes=1 << 30,
                       retention_days=1.0, clock=lambda: clock[0],
                       clock_synced=lambda now: now >= retention.CLOCK_FLOOR)


def _write(writer: StoreWriter, ident: str, at: float) -> None:
    item = Interaction(id=ident, response="r", prompt="p", created_at=at)
    assert writer.enqueue("insert", to_row(item), item.id).wait(5)
    assert writer.flush()  # retention runs after a batch's tickets are released:
    assert writer.flush()  # this one waits for it


def test_rows_of_1970_survive_the_sync_and_the_clock_set_back(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    clock = [BOOT_1970]
    writer = _writer(path, clock)
    try:
        _write(writer, "at-boot", BOOT_1970)  # unsynced: retention waits
        assert set(_ages(path)) == {"at-boot"}
        clock[0] = NOW  # NTP sync: 56 years later
        _write(writer, "after-sync", NOW)
        ages = _ages(path)
        assert set(ages) == {"at-boot", "after-sync"}  # the fresh row was not deleted
        assert ages["at-boot"] == NOW  # its age counts from the sync
        clock[0] = BOOT_1970 + 120  # set back (a bad RTC, a bad NTP answer)
        _write(writer, "set-back", clock[0])
        assert set(_ages(path)) == {"at-boot", "after-sync", "set-back"}
        clock[0] = NOW + 2 * DAY  # synced again, two days on: the old rows age out
        _write(writer, "later", clock[0])
        assert set(_ages(path)) == {"set-back", "later"}  # set-back re-stamped, kept
    finally:
        writer.close()


def test_age_out_waits_for_the_sync_signal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "s.sqlite3")
    migrate(conn)
    row = to_row(Interaction(id="old", response="r", prompt="p", created_at=NOW - 3 * DAY))
    conn.execute(f"INSERT INTO interactions ({', '.join(row)}) VALUES "
                 f"({', '.join('?' for _ in row)})", list(row.values()))
    assert retention.age_out(conn, NOW, DAY, synced=lambda now: False) == 0
    assert conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 1
    assert retention.age_out(conn, NOW, DAY, synced=lambda now: True) > 0
    assert conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0] == 0
    conn.close()


def test_the_default_signal(tmp_path: Path) -> None:
    marker = tmp_path / "timesync" / "synchronized"
    assert not retention.clock_synced(BOOT_1970, marker)  # before the floor: never
    assert retention.clock_synced(NOW, marker)  # no timesyncd here: the floor decides
    marker.parent.mkdir()
    assert not retention.clock_synced(NOW, marker)  # timesyncd runs and has not synced
    marker.touch()
    assert retention.clock_synced(NOW, marker)

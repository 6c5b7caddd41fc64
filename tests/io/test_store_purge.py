"""Purge of the interaction store: in batches beside a serving store, content overwritten.

Before: one DELETE and a full VACUUM under the store's read lock (the lock the daemon's main
loop and every ``exists`` check need), on an SD card for longer than the watchdog.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from agent.io.store import InteractionStore
from agent.io.store_records import Interaction, to_row
from agent.io.store_schema import connect, migrate

CANARY = "canary-4f1e-purge-me"


def _fill(path: Path, n: int, *, age_s: float = 0.0, text: str = "row") -> None:
    """Insert ``n`` rows created ``age_s`` ago directly (fast), as the writer would have."""
    created_at = time.time() - age_s
    conn = connect(path)
    migrate(conn)
    top = int(conn.execute("SELECT COALESCE(MAX(change_seq), 0) FROM interactions").fetchone()[0])
    rows = []
    for k in range(n):
        row = to_row(Interaction(response=f"{text} {k} " + "x" * 150, prompt=f"p{k}",
                                 created_at=created_at))
        row["change_seq"] = top + k + 1
        rows.append(row)
    cols = list(rows[0])
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO interactions ({','.join(cols)}) VALUES "
                     f"({','.join('?' * len(cols))})", [tuple(r[c] for c in cols) for r in rows])
    conn.execute("COMMIT")
    conn.close()


def test_purge_of_a_large_store_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    _fill(path, 50_000)
    store = InteractionStore(path)
    stop = threading.Event()
    worst: list[float] = [0.0]
    served: list[str] = []

    def serve() -> None:  # the inference service: record, wait for the commit, look up
        n = 0
        while not stop.is_set():
            t0 = time.monotonic()
            item = Interaction(response=f"served {n}", prompt="q")
            assert store.record(item).wait(30)
            assert store.exists(item.id) and store.counts()["interactions"] >= 1
            worst[0] = max(worst[0], time.monotonic() - t0)
            served.append(item.id)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=serve)
    try:
        thread.start()
        time.sleep(0.2)
        before = len(served)
        t0 = time.monotonic()
        deleted = store.purge()
        took = time.monotonic() - t0
        time.sleep(0.1)
        stop.set()
        thread.join(30)
        assert deleted >= 50_000
        assert len(served) > before + 10, "serving stopped during the purge"
        assert worst[0] < 1.0, f"a request waited {worst[0]:.2f} s during a {took:.1f} s purge"
        # rows written after the purge began are kept; the purge never chases new writes
        left = {r["id"] for r in store.iter_rows()}
        assert left and left <= set(served)
        assert set(served[-3:]) <= left
        assert store.counts()["interactions"] == len(left)
    finally:
        stop.set()
        store.close()


def test_purged_text_is_overwritten_and_space_returned(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = InteractionStore(path)
    for k in range(300):
        store.record(Interaction(response=f"{CANARY} {k} " + "y" * 2000, prompt="q"))
    store.flush()
    wal = tmp_path / "s.sqlite3-wal"
    size_full = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert store.purge() == 300
    store.close()
    for name in ("s.sqlite3", "s.sqlite3-wal"):
        file = tmp_path / name
        if file.exists():
            assert CANARY.encode() not in file.read_bytes(), f"purged text left in {name}"
    assert path.stat().st_size < size_full / 4  # pages handed back (incremental vacuum)


def test_purge_before_a_date_and_the_purge_log(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    _fill(path, 1200, age_s=3600, text="old")
    _fill(path, 10, text="new")
    with InteractionStore(path) as store:
        assert store.purges_after(0) == (0, None)
        last = store.last_seq()
        assert store.purge(before=time.time() - 1800) == 1200
        newest, first_seq = store.purges_after(0)
        assert first_seq == 1 and newest >= 3  # one log row per batch of 500
        assert store.purges_after(newest) == (newest, None)
        assert all(r["response"].startswith("new") for r in store.iter_rows())
        assert store.last_seq() == last  # seqs are never given again


def test_a_store_from_before_incremental_vacuum_is_converted_at_its_first_purge(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    migrate(old)  # created without auto_vacuum, as older agents did
    old.close()
    _fill(path, 100)
    with InteractionStore(path) as store:
        assert store.purge() == 100
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    conn.close()

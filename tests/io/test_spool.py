"""The offline spool on a real SQLite file: order, bounds, durability, latest state."""

from __future__ import annotations

from agent.io.fleet_store import FleetStore
from agent.io.spool import Spool


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_fifo_ack_and_reopen(tmp_path):
    clock = Clock()
    s = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=3600, clock=clock)
    for i in range(5):
        s.append("t", f"m{i}".encode())
    batch = s.peek(3)
    assert [e.payload for e in batch] == [b"m0", b"m1", b"m2"]
    s.ack(batch[-1].id)
    s.close()
    s = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=3600, clock=clock)
    assert [e.payload for e in s.peek(10)] == [b"m3", b"m4"]
    assert s.stats() == (2, 2 * (1 + 2))


def test_bounded_by_bytes_oldest_first(tmp_path):
    s = Spool(tmp_path / "s.db", max_bytes=4096, max_age_s=3600, clock=Clock())
    for i in range(100):
        s.append("topic", bytes([i]) * 100)
    entries, size = s.stats()
    assert size <= 4096 and entries == 4096 // 105
    kept = s.peek(1000)
    assert kept[-1].payload[0] == 99 and kept[0].payload[0] == 100 - entries
    assert s.dropped == 100 - entries


def test_bounded_by_age(tmp_path):
    clock = Clock()
    s = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=60, clock=clock)
    s.append("t", b"old")
    clock.t += 30
    s.append("t", b"mid")
    clock.t += 40  # 'old' is now 70 s old
    assert [e.payload for e in s.peek(10)] == [b"mid"]


def test_latest_state_replaces(tmp_path):
    clock = Clock()
    s = Spool(tmp_path / "s.db", max_bytes=1 << 20, max_age_s=60, clock=clock)
    assert s.peek_state() is None
    s.put_state("st", b"one")
    clock.t += 1
    s.put_state("st", b"two")
    got = s.peek_state()
    assert got is not None and got.payload == b"two"
    s.clear_state(got.ts - 1)  # another state: kept
    assert s.peek_state() is not None
    s.clear_state(got.ts)
    assert s.peek_state() is None


def test_fleet_store_seq_jobs_and_dedup(tmp_path):
    from agent.core.jobs import JobStatus, new_job, transition

    store = FleetStore(tmp_path / "f.db")
    assert [store.next_session_seq() for _ in range(3)] == [1, 2, 3]
    job = new_job("j", "purge-data", {}, request_id=None, now=1.0, timeout_s=5)
    assert store.insert_job(job) is None
    assert store.insert_job(job) == job  # known id: the stored job comes back
    store.save_job(transition(job, JobStatus.IN_PROGRESS, now=2.0))
    store.close()
    store = FleetStore(tmp_path / "f.db")
    assert store.next_session_seq() == 4
    assert [j.status for j in store.open_jobs()] == [JobStatus.IN_PROGRESS]
    for i in range(5):
        j = new_job(f"t{i}", "rollback", {}, request_id=None, now=10.0 + i, timeout_s=5)
        store.insert_job(transition(j, JobStatus.REJECTED, now=11.0 + i))
    store.prune_terminal(keep=2)
    assert store.get_job("t4") is not None and store.get_job("t0") is None
    assert store.get_job("j") is not None  # open jobs are never pruned

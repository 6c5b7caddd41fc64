"""Every write path of the io layer on a full and on a read-only disk (a real tmpfs).

For each: the failure is reported with a reason a person can act on, it never raises into the
thread that owns the path (the store's writer, the fleet link's network thread), what was
stored before is still there, and writes succeed again by themselves once space returns.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.errors import TrainingError
from agent.io.adapter_fs import AdapterValidator
from agent.io.disk import DiskFaults, describe, is_disk_fault
from agent.io.fleet_store import FleetStore
from agent.io.registry import AdapterRegistry
from agent.io.spool import Spool
from agent.io.store import InteractionStore, StoreConfig
from agent.io.store_records import Interaction
from agent.training.checkpoint import CheckpointState, load_checkpoint, save_checkpoint
from tests.io.disk_mount import SmallDisk, abort, disk, ext4_disk
from tests.io.tiny_bundle import make_adapter, make_bundle

__all__ = ["disk"]  # the fixture, imported for pytest


def _record_until_refused(store: InteractionStore, size: int, limit: int = 400) -> int:
    """Record interactions of ``size`` bytes until one is refused; how many were stored."""
    for n in range(limit):
        ticket = store.record(Interaction(response="x" * size, prompt=f"p{n}"))
        if not ticket.wait(10):
            assert ticket.error is not None and "disk full at" in ticket.error, ticket.error
            return n
    raise AssertionError(f"{limit} writes of {size} bytes never hit the full disk")


def test_disk_fault_classification(tmp_path: Path) -> None:
    assert is_disk_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_fault(OSError(errno.EROFS, "Read-only file system"))
    assert is_disk_fault(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_fault(OSError(errno.ENOENT, "No such file"))
    assert not is_disk_fault(ValueError("disk full"))
    line = describe(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    assert line.startswith(f"disk full at {tmp_path}: ") and " free" in line


def test_store_on_a_full_disk_refuses_new_writes_keeps_old_and_recovers(disk: SmallDisk) -> None:
    faults = DiskFaults()
    store = InteractionStore(disk.path / "s.sqlite3",
                             StoreConfig(max_total_bytes=1 << 30), faults=faults)
    try:
        for n in range(20):
            assert store.record(Interaction(response=f"kept {n}", prompt="q")).wait(10)
        disk.fill()
        stored = _record_until_refused(store, 60_000)
        assert store.write_error is not None and faults.get("store") == store.write_error
        assert store.counts()["interactions"] == 20 + stored  # nothing stored before is lost
        kept = {r["response"] for r in store.iter_rows()}
        assert {f"kept {n}" for n in range(20)} <= kept
        disk.free()
        assert store.record(Interaction(response="after", prompt="z")).wait(10)
        assert store.write_error is None and not faults
        assert store.counts()["interactions"] == 21 + stored
    finally:
        store.close()


def test_store_when_the_kernel_remounts_read_only(tmp_path: Path) -> None:
    with ext4_disk(tmp_path) as card:
        faults = DiskFaults()
        store = InteractionStore(card.path / "s.sqlite3", faults=faults)
        try:
            for n in range(5):
                assert store.record(Interaction(response=f"kept {n}", prompt="q")).wait(10)
            abort(card)
            ticket = store.record(Interaction(response="x" * 50_000, prompt="q2"))
            assert not ticket.wait(10) and ticket.error is not None
            assert faults.get("store") is not None, faults.messages()
            assert "read-only" in faults.get("store"), faults.messages()
            kept = {r["response"] for r in store.iter_rows()}
            assert kept == {f"kept {n}" for n in range(5)}  # everything stored is readable
        finally:
            store.close()


def test_registry_publish_on_a_full_disk_keeps_the_active_adapter(
        disk: SmallDisk, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    reg = AdapterRegistry(disk.path / "adapters", validator=AdapterValidator(bundle))
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    disk.fill()
    with pytest.raises(OSError) as info:
        reg.publish(make_adapter(bundle, tmp_path / "a2", 0.2))
    assert is_disk_fault(info.value)
    assert reg.active() == v1 and reg.versions() == [v1]
    assert np.allclose(reg.load_flat_b()[1], 0.1)
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]  # space given back
    disk.free()
    assert reg.publish(make_adapter(bundle, tmp_path / "a3", 0.3)) == "v0002"
    assert reg.active() == "v0002"


def test_checkpoint_on_a_full_disk_keeps_the_last_good_one(disk: SmallDisk) -> None:
    directory = disk.path / "ckpt"
    state = CheckpointState(step=3, run_seed=1, config_hash="c", data_fingerprint="d",
                            bundle_id="b", epoch=0, position=3)
    save_checkpoint(directory, state, np.full(1000, 0.5, np.float32))
    disk.fill()
    with pytest.raises(TrainingError, match="checkpoint of step 4 not written: disk full at"):
        save_checkpoint(directory, CheckpointState(**{**state.__dict__, "step": 4}),
                        np.full(200_000, 0.7, np.float32))
    ckpt = load_checkpoint(directory)
    assert ckpt is not None and ckpt.state.step == 3 and np.allclose(ckpt.lora_b, 0.5)
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
    disk.free()
    save_checkpoint(directory, CheckpointState(**{**state.__dict__, "step": 5}),
                    np.full(1000, 0.9, np.float32))
    ckpt = load_checkpoint(directory)
    assert ckpt is not None and ckpt.state.step == 5


def test_spool_on_a_full_disk_drops_new_entries_only(disk: SmallDisk) -> None:
    spool = Spool(disk.path / "spool.db", max_bytes=1 << 30, max_age_s=3600)
    try:
        for n in range(5):
            spool.append("t", f"m{n}".encode())
        disk.fill()
        for _ in range(200):  # until the WAL must grow
            spool.append("t", bytes(40_000))
            if spool.error is not None:
                break
        assert spool.error is not None and "full" in spool.error, spool.error
        assert spool.failed_writes >= 1
        assert [e.payload for e in spool.peek(5)] == [f"m{n}".encode() for n in range(5)]
        spool.put_state("st", b"x" * 100_000)  # never raises either
        disk.free()
        spool.append("t", b"after")
        assert spool.error is None
    finally:
        spool.close()


def test_fleet_store_locked_during_reconnect_still_gives_a_new_session(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "fleet.db", busy_timeout_s=0.2)
    assert store.next_session_seq() == 1
    other = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds fleet.db
    seen: list[int] = []
    # the MQTT network thread asks for the Last Will's sequence before each connect
    thread = threading.Thread(target=lambda: seen.extend(
        store.next_session_seq() for _ in range(2)))
    thread.start()
    thread.join(10)
    assert seen == [2, 3] and store.error is not None and "session sequence" in store.error
    other.execute("ROLLBACK")
    other.close()
    assert store.next_session_seq() == 4 and store.error is None
    store.close()
    assert FleetStore(tmp_path / "fleet.db").next_session_seq() == 5  # persisted, never reused


def test_fleet_store_and_spool_when_the_kernel_remounts_read_only(tmp_path: Path) -> None:
    with ext4_disk(tmp_path) as card:
        store = FleetStore(card.path / "fleet.db")
        spool = Spool(card.path / "spool.db", max_bytes=1 << 30, max_age_s=3600)
        try:
            assert store.next_session_seq() == 1
            spool.append("t", b"kept")
            abort(card)
            assert store.next_session_seq() == 2 and store.error is not None
            spool.append("t", b"new")  # never raises
            assert spool.error is not None and spool.failed_writes == 1
            assert [e.payload for e in spool.peek(5)] == [b"kept"]
        finally:
            store.close()
            spool.close()


def test_status_registry_checkpoint_on_a_read_only_remount_and_back(
        disk: SmallDisk, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    reg = AdapterRegistry(disk.path / "adapters", validator=AdapterValidator(bundle))
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    disk.read_only(True)
    with pytest.raises(OSError) as info:
        reg.publish(make_adapter(bundle, tmp_path / "a2", 0.2))
    assert is_disk_fault(info.value) and "read-only" in describe(disk.path, info.value)
    with pytest.raises(TrainingError, match="read-only"):
        save_checkpoint(disk.path / "ckpt", CheckpointState(
            step=1, run_seed=1, config_hash="c", data_fingerprint="d", bundle_id="b", epoch=0,
            position=1), np.zeros(10, np.float32))
    assert reg.active() == v1
    disk.read_only(False)
    assert reg.publish(make_adapter(bundle, tmp_path / "a3", 0.3)) == "v0002"

"""The daemon on a full disk (a real tmpfs the test mounts): it reports, keeps the watchdog fed,
starts at all, and recovers by itself; and its status file is written only on change, paced.

Before: a full disk made the status write fail every tick, three failed ticks stopped the
watchdog pings (systemd killed the daemon), and a daemon started on a full disk exited at
once (a crash loop into ``failed``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, LoadedConfig
from agent.core.status import Progress
from agent.io.adapter_fs import AdapterValidator
from agent.io.disk import DiskFaults
from agent.io.registry import AdapterRegistry
from agent.io.status_file import read_status
from agent.io.store import InteractionStore
from agent.io.store_records import Interaction
from agent.io.sysfs import SysfsSensors
from agent.io.systemd import Notifier
from agent.services.daemon.loop import Daemon, Ports
from agent.services.daemon.status import StatusReporter
from tests.integration.daemon_support import FakeDevice, NotifySocket
from tests.io.disk_mount import SmallDisk, disk
from tests.io.tiny_bundle import make_bundle

__all__ = ["disk"]  # the fixture, imported for pytest


class Parts:
    """A daemon's real parts with its state directory on the small disk."""

    def __init__(self, tmp: Path, disk: SmallDisk) -> None:
        bundle = make_bundle(tmp / "bundle")
        device = FakeDevice(tmp / "device")
        self.state = disk.path / "state"
        self.cfg = AgentConfig.model_validate({
            "paths": {"state_dir": str(self.state)},
            "service": {"bundle_dir": str(bundle)},
            "device": {"sysfs_root": str(device.root / "sys"),
                       "procfs_root": str(device.proc)},
        })
        self.state.mkdir(parents=True, exist_ok=True)
        self.bundle = bundle
        self.faults = DiskFaults()
        self.store: InteractionStore | None = None

    def open_store(self) -> InteractionStore:
        self.store = InteractionStore(self.cfg.store_path, faults=self.faults)
        return self.store

    def daemon(self, notifier: Notifier | None = None, watchdog: float | None = None) -> Daemon:
        registry = AdapterRegistry(self.cfg.registry_dir,
                                   validator=AdapterValidator(self.bundle))
        store = self.store or self.open_store()
        return Daemon(LoadedConfig(config=self.cfg, declared=self.cfg), store=store,
                      registry=registry, ports=Ports(sensors=SysfsSensors.from_config(self.cfg)),
                      notifier=notifier or Notifier(None), tick_s=0.05,
                      watchdog_interval=watchdog, faults=self.faults, status_interval_s=0.2)


@pytest.fixture
def parts(tmp_path: Path, disk: SmallDisk) -> Iterator[Parts]:
    p = Parts(tmp_path, disk)
    yield p
    if p.store is not None:
        p.store.close()


def _run(daemon: Daemon) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run_forever, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def test_full_disk_is_reported_watchdog_fed_and_recovered(
        parts: Parts, disk: SmallDisk, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = parts.daemon(Notifier(str(notify.path)), watchdog=0.05)
    assert daemon.tick_once()
    daemon.reporter.publish()
    disk.fill()
    thread, stop = _run(daemon)
    try:
        deadline = time.monotonic() + 10
        while "disk full at" not in daemon.status.reason:
            assert time.monotonic() < deadline, daemon.status
            time.sleep(0.05)
        assert str(parts.state) in daemon.status.reason
        pings = len(notify.times_of("WATCHDOG=1"))
        time.sleep(1.0)  # a couple of dozen ticks, each with a failing write
        assert len(notify.times_of("WATCHDOG=1")) >= pings + 5, "the watchdog starved"
        assert daemon.tick_errors == 0 and thread.is_alive()
        disk.free()
        deadline = time.monotonic() + 10
        while daemon.faults or "disk full" in read_status(parts.state).reason:
            assert time.monotonic() < deadline, (daemon.faults.messages(), daemon.status)
            time.sleep(0.05)
    finally:
        stop.set()
        daemon.wake.set()
        thread.join(10)
        notify.close()


def test_daemon_started_on_a_full_disk_runs_and_recovers(parts: Parts, disk: SmallDisk) -> None:
    store = parts.open_store()
    assert store.record(Interaction(response="kept", prompt="q")).wait(10)
    store.close()
    parts.store = None
    disk.fill()
    store = parts.open_store()  # a full card cannot even open the WAL: starts anyway
    assert parts.faults.get("store") is not None
    daemon = parts.daemon()
    daemon.reporter.publish(force=True)  # what run_forever does first
    for _ in range(5):
        assert daemon.tick_once(), "a disk fault counted as a failed tick (watchdog stops)"
    assert "disk full at" in daemon.status.reason and daemon.tick_errors == 0
    assert not store.record(Interaction(response="refused", prompt="q")).wait(10)
    disk.free()
    for _ in range(3):
        assert daemon.tick_once()
    assert store.record(Interaction(response="after", prompt="q")).wait(10)
    deadline = time.monotonic() + 5
    while parts.faults:  # the status write is retried at its slow pace (0.2 s here)
        assert time.monotonic() < deadline, parts.faults.messages()
        assert daemon.tick_once()
        time.sleep(0.05)
    assert {r["response"] for r in store.iter_rows()} == {"kept", "after"}
    assert "disk" not in read_status(parts.state).reason


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_status_file_written_on_change_and_paced(tmp_path: Path) -> None:
    mono = Tick()
    reporter = StatusReporter(tmp_path, Notifier(None), time.time, lambda: "initial",
                              min_interval_s=10.0, monotonic=mono)
    reporter.publish(force=True)
    assert reporter.writes == 1
    for _ in range(20):  # an idle daemon ticking: nothing changed, nothing written
        mono.t += 1
        reporter.publish()
    assert reporter.writes == 1
    reporter.set("training", "constraints hold", progress=Progress(step=0, total=50))
    reporter.publish()
    assert reporter.writes == 2  # a state change is written at once
    for step in range(1, 31):  # a step per second: progress is written every 10 s only
        mono.t += 1
        reporter.set("training", "constraints hold", progress=Progress(step=step, total=50))
        reporter.publish()
    assert reporter.writes == 2 + 3
    assert read_status(tmp_path).progress == Progress(step=30, total=50)
    reporter.set("waiting", "done")
    reporter.publish()
    assert reporter.writes == 6 and read_status(tmp_path).state == "waiting"


def test_status_write_failure_is_shown_and_retried_at_the_slow_pace(
        disk: SmallDisk) -> None:
    mono = Tick()
    reporter = StatusReporter(disk.path, Notifier(None), time.time, lambda: "initial",
                              min_interval_s=10.0, monotonic=mono)
    reporter.publish(force=True)
    disk.fill()
    reporter.set("waiting", "on battery")
    reporter.publish()  # never raises
    shown = reporter.shown()
    assert shown.state == "waiting" and "status: disk full at" in shown.reason
    assert reporter.status.reason == "on battery"  # the faults are shown, not stored
    attempts = reporter.writes
    for _ in range(5):
        mono.t += 1
        reporter.publish()
    disk.free()
    mono.t += 10
    reporter.publish()
    assert reporter.writes == attempts + 1 and not reporter.faults
    assert read_status(disk.path).reason == "on battery"


def test_daemon_started_on_a_read_only_card_runs_and_recovers(
        parts: Parts, disk: SmallDisk) -> None:
    store = parts.open_store()
    assert store.record(Interaction(response="kept", prompt="q")).wait(10)
    store.close()
    parts.store = None
    disk.read_only(True)
    store = parts.open_store()  # SQLite cannot open a WAL file on a read-only mount
    assert "read-only" in (parts.faults.get("store") or "")
    daemon = parts.daemon()
    daemon.reporter.publish(force=True)
    for _ in range(3):
        assert daemon.tick_once(), "a read-only card counted as a failed tick"
    assert "filesystem read-only at" in daemon.status.reason and daemon.tick_errors == 0
    assert daemon.status.blocked_by == ("disk",)
    disk.read_only(False)
    deadline = time.monotonic() + 5
    while parts.faults:
        assert time.monotonic() < deadline, parts.faults.messages()
        assert daemon.tick_once()
        time.sleep(0.05)
    assert [r["response"] for r in store.iter_rows()] == ["kept"]

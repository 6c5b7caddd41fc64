"""``mobizo-agent run`` started on a full disk: it stays up, says why, feeds the watchdog, and
picks up by itself once space returns (a real process on a tmpfs the test mounts and fills).

Before: the store could not open its WAL on the full card and the daemon exited at start;
systemd restarted it into the same wall until the unit was ``failed`` (a crash loop).
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.io.store import InteractionStore
from agent.io.store_records import Interaction
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    NotifySocket,
    base_config,
    write_config,
)
from tests.io.disk_mount import SmallDisk, disk
from tests.io.tiny_bundle import make_bundle

__all__ = ["disk"]  # the fixture, imported for pytest


def test_daemon_started_on_a_full_disk_does_not_crash_loop(
        tmp_path: Path, disk: SmallDisk) -> None:
    bundle = make_bundle(tmp_path / "bundle")  # no program runs: no run can start here
    device = FakeDevice(tmp_path / "device")
    state = disk.path / "state"
    with InteractionStore(state / "interactions.sqlite3") as store:
        assert store.record(Interaction(response="kept", prompt="q")).wait(10)
    sections = base_config(tmp_path, device, bundle, paths={"state_dir": str(state)},
                           constraints={"min_new_examples": 1000})
    config = write_config(tmp_path / "agent.toml", sections)
    disk.fill()
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log", notify=notify,
                           watchdog_usec=400_000, tick=0.1)
    try:
        daemon.wait_socket(30)
        full = daemon.wait_status(lambda s: "disk full at" in s["reason"], 30, "the disk fault")
        assert str(state) in full["reason"]
        pings = len(notify.times_of("WATCHDOG=1"))
        time.sleep(2.0)
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
        assert len(notify.times_of("WATCHDOG=1")) >= pings + 4, "the watchdog starved"
        disk.free()
        daemon.wait_status(lambda s: "disk" not in s["reason"], 60, "recovery")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        notify.close()
    with InteractionStore(state / "interactions.sqlite3") as store:
        assert [r["response"] for r in store.iter_rows()] == ["kept"]

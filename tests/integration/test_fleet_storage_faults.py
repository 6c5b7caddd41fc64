"""The fleet link's own files on a full card: the daemon's status says so, and clears it.

The spool and the fleet store never raise into the link (a full card must not stop the
fleet link); each keeps its last write failure. The link shows those in the daemon's disk
faults (what the status reports) and clears them when a write works again. Real broker, real
SQLite on a small tmpfs filled to ENOSPC.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agent.io.disk import DiskFaults
from tests.integration.conftest import mqtt_config
from tests.io.disk_mount import SmallDisk, disk

pytestmark = pytest.mark.broker
__all__ = ["disk"]  # the fixture, imported for pytest


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_spool_failure_on_a_full_card_is_shown_in_the_status_and_cleared(
        broker, link_factory, fleet: str, disk: SmallDisk) -> None:
    faults = DiskFaults()
    link, _ = link_factory(mqtt_config(broker, fleet), "dev-full",
                           state_dir=disk.path / "fleet", faults=faults)
    assert faults.get("spool") is None
    disk.fill()
    for _ in range(200):  # until the spool's WAL must grow
        link.spool.append("t", bytes(40_000))
        if link.spool.error is not None:
            break
    assert link.spool.error is not None
    _wait_for(lambda: faults.get("spool") is not None)
    assert "full" in (faults.get("spool") or "")
    assert any(m.startswith("spool: ") for m in faults.messages())
    disk.free()
    link.spool.append("t", b"after")
    _wait_for(lambda: faults.get("spool") is None)


def test_a_note_without_a_fault_changes_nothing() -> None:
    changes: list[int] = []
    faults = DiskFaults(on_change=lambda: changes.append(1))
    faults.note("spool", None)
    assert not faults and changes == []
    faults.note("spool", "disk full at /x")
    faults.note("spool", "disk full at /x")  # the same message again: no new change
    assert faults.get("spool") == "disk full at /x" and changes == [1]
    faults.note("spool", None)
    assert not faults and changes == [1, 1]

"""A locked ``fleet.db`` while the link reconnects: the network thread lives on (real broker).

Before: the Last Will of each connect attempt takes the next session sequence from
``fleet.db`` on paho's network thread; "database is locked" raised there and ended the thread
silently, so the device never reconnected again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.integration.conftest import mqtt_config, wait_online

pytestmark = pytest.mark.broker


def test_fleet_db_locked_during_reconnect_keeps_the_link(
        restartable_broker, link_factory, fleet: str, tmp_path: Path) -> None:
    config = mqtt_config(restartable_broker, fleet)
    link, _ = link_factory(config, "dev-locked", state_dir=tmp_path / "dev-locked")
    first = link.session_seq
    other = sqlite3.connect(tmp_path / "dev-locked" / "fleet.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool holding the file
        restartable_broker.stop()
        deadline = time.monotonic() + 10
        while link.connected:
            assert time.monotonic() < deadline, "the link never noticed the broker was gone"
            time.sleep(0.05)
        restartable_broker.start()
        born = wait_online(config, "dev-locked", timeout=30, min_seq=first)
        assert born["session_seq"] > first
        assert link.store.error is not None and "session sequence" in link.store.error
        assert link.transport._thread is not None and link.transport._thread.is_alive()
    finally:
        other.execute("ROLLBACK")
        other.close()
    # the file takes writes again: the next sequence is persisted and never reused
    assert link.store.next_session_seq() > born["session_seq"] and link.store.error is None

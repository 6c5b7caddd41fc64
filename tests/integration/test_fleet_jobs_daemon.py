"""``cancel`` of a fleet train-now against the real daemon: its burst stops as a pause stops it
(the trainer ends the step in flight, checkpoints, exits), within a tick and a step or two."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.controller.client import BrokerOptions, FleetClient
from tests.integration.conftest import FAST
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    base_config,
    pid_alive,
    seed_store,
    write_config,
)
from tests.integration.test_daemon_bursts import TICK_S, _stop_bound

pytestmark = [pytest.mark.runtime, pytest.mark.broker]


def test_cancel_stops_a_real_train_now_burst(
    tmp_path: Path, starter_bundle: Path, broker: object, fleet: str
) -> None:
    device = FakeDevice(tmp_path / "device")
    device.plug(False)  # on battery: only the fleet's train-now (ignoring it) trains
    state = tmp_path / "state"
    seed_store(state, n=24)
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port,  # type: ignore[attr-defined]
            "fleet": fleet, "device_id": "dev1", **FAST}
    cfg = write_config(tmp_path / "agent.toml", base_config(
        tmp_path, device, starter_bundle, mqtt=mqtt, training={"steps_per_burst": 50}))
    daemon = DaemonProcess(cfg, state, tmp_path / "daemon.log", tick=TICK_S)
    opts = BrokerOptions(host=broker.host, port=broker.port, fleet=fleet)  # type: ignore[attr-defined]
    try:
        daemon.wait_socket()
        with FleetClient(opts) as fc:
            fc.snapshot(0.5, device="dev1")
            reply = fc.request("dev1", "train-now", {"ignore_constraints": True}, timeout=30,
                               job_id="burst")
            assert reply.ok, reply
            seen = daemon.wait_status(
                lambda s: s["state"] == "training" and (s.get("progress") or {}).get("step", 0)
                >= 1, 120, "a step")
            trainer = seen["daemon"]["trainer_pid"]
            t0 = time.monotonic()
            answer = fc.request("dev1", "cancel", {"job_id": "burst"}, timeout=10)
            assert answer.ok, answer
            job = fc.wait_job("dev1", "burst", timeout=60)
            took = time.monotonic() - t0
        assert job["status"] == "CANCELED" and job["result"]["outcome"] == "canceled", job
        stopped = daemon.wait_status(
            lambda s: (s.get("last_burst") or {}).get("outcome") == "stopped", 60, "the stop")
        assert "canceled by the fleet controller" in stopped["last_burst"]["reason"]
        assert not pid_alive(trainer)
        assert took <= _stop_bound(state), (took, _stop_bound(state))
        print(f"cancel took {took:.2f} s (bound {_stop_bound(state):.2f} s)")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

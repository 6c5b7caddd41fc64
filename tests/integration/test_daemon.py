"""The agent daemon end to end: real daemon, trainer, evaluator, inference service and store.

Only the device is fake (a sysfs/procfs tree in tmp_path). The long variants (charger pulled
mid-burst, kill -9 of the trainer and of the daemon) are in test_daemon_bursts.py (slow).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    NotifySocket,
    ServiceProcess,
    base_config,
    maps_mention,
    seed_store,
    write_config,
)

pytestmark = pytest.mark.runtime


@pytest.fixture()
def device(tmp_path: Path) -> FakeDevice:
    return FakeDevice(tmp_path / "device")


def test_end_to_end_publishes_a_better_adapter_that_the_service_serves(
    tmp_path: Path, device: FakeDevice, starter_bundle: Path
) -> None:
    state = tmp_path / "state"
    seed_store(state, n=24)
    service = ServiceProcess(starter_bundle, state, tmp_path / "service.log")
    daemon = None
    try:
        cfg = write_config(tmp_path / "agent.toml",
                           base_config(tmp_path, device, starter_bundle, url=service.url))
        daemon = DaemonProcess(cfg, state, tmp_path / "daemon.log")
        daemon.wait_socket()
        training = daemon.wait_status(lambda s: s["state"] == "training", 60, "a burst")
        assert training["daemon"]["trainer_pid"]
        done = daemon.wait_status(
            lambda s: (s.get("last_burst") or {}).get("outcome") in ("published", "rejected",
                                                                     "failed", "rolled_back"),
            150, "the run to end")
        last = done["last_burst"]
        assert last["outcome"] == "published", last
        assert last["heldout_loss_candidate"] < last["heldout_loss_active"]
        version = last["adapter_version"]
        assert done["active_adapter"] == version

        # the running service serves it: /health, /v1/models and the responses say so
        client = service.client()
        assert client.health()["adapter"]["version"] == version
        assert client.get("/v1/models").json["data"][0]["adapter_version"] == version
        reply = client.complete("hello", max_tokens=2)
        assert reply.status == 200
        assert reply.headers["x-adapter-version"] == version

        # the daemon stayed light: no torch / executorch, in Python or mapped
        doc = daemon.status()["daemon"]
        assert doc["heavy_modules"] == []
        assert not maps_mention(daemon.pid, "libtorch")
        assert not maps_mention(daemon.pid, "executorch")
        assert doc["rss_kb"] < 80 * 1024

        # nothing of the run is left behind: checkpoint cleared, data snapshot removed
        assert not (state / "checkpoints" / "checkpoint.safetensors").exists()
        assert not (state / "run" / "train.jsonl").exists()
        assert daemon.terminate() == 0
    finally:
        if daemon is not None:
            daemon.kill()
        service.stop()


def test_notify_protocol_reload_and_watchdog(tmp_path: Path, device: FakeDevice,
                                             starter_bundle: Path) -> None:
    """READY, STATUS, WATCHDOG, RELOADING(+MONOTONIC_USEC), READY, STOPPING, in order; an
    invalid reload keeps the old config; the watchdog goes quiet while the loop hangs."""
    device.plug(False)  # on battery: the daemon waits, nothing trains
    sections = base_config(tmp_path, device, starter_bundle)
    cfg = write_config(tmp_path / "agent.toml", sections)
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(cfg, tmp_path / "state", tmp_path / "daemon.log", notify=notify,
                           watchdog_usec=400_000)  # ping every 0.2 s
    try:
        ready = notify.wait_for("READY=1", 60)
        notify.wait_for("STATUS=waiting: on battery", 10)
        notify.wait_for("WATCHDOG=1", 10, after=ready)
        status = daemon.wait_status(lambda s: s["state"] == "waiting", 10)
        assert "on battery" in status["reason"]

        # valid reload: the change applies (the battery floor now shows in the reason)
        sections["constraints"]["require_charging_or_mains"] = False
        sections["constraints"]["battery_start_pct"] = 100.0
        sections["constraints"]["battery_stop_pct"] = 99.0
        write_config(cfg, sections)
        device_battery = device.sys / "BAT0" / "capacity"
        device_battery.write_text("54\n")
        mark = len(notify.fields())
        os.kill(daemon.pid, signal.SIGHUP)
        i = notify.wait_for("RELOADING=1", 10, after=mark)
        assert notify.fields()[i + 1].startswith("MONOTONIC_USEC=")
        usec = int(notify.fields()[i + 1].split("=")[1])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
        notify.wait_for("READY=1", 10, after=i)
        daemon.wait_status(lambda s: "battery 54% < 100%" in s["reason"], 10, "new thresholds")

        # invalid reload: errors logged with their field path, the old config keeps running
        cfg.write_text("[training]\nq = 0\n")
        mark = len(notify.fields())
        os.kill(daemon.pid, signal.SIGHUP)
        i = notify.wait_for("RELOADING=1", 10, after=mark)
        notify.wait_for("READY=1", 10, after=i)
        time.sleep(0.5)
        assert "training.q" in daemon.log() and "reload rejected" in daemon.log()
        status = daemon.status()
        assert "battery 54% < 100%" in status["reason"]

        # a hung main loop stops the watchdog pings; they come back after the hang
        daemon.control("debug-hang", {"seconds": 2.0})
        time.sleep(0.3)
        hang_start = time.monotonic()
        time.sleep(1.2)
        pings = [t for t in notify.times_of("WATCHDOG=1") if hang_start <= t]
        assert pings == [], "watchdog pinged while the main loop hung"
        time.sleep(1.5)
        assert [t for t in notify.times_of("WATCHDOG=1") if t > hang_start + 1.2]

        # train-now skips the chosen constraints, never the thermal guard
        import subprocess
        import sys

        device.heat(95.0)
        cli = [sys.executable, "-m", "agent", "train-now", "--state-dir", str(tmp_path / "state")]
        proc = subprocess.run([*cli, "--ignore", "power,battery"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        status = daemon.wait_status(lambda s: "95 °C" in s["reason"], 10, "thermal block")
        assert status["state"] == "waiting" and status["blocked_by"] == ["thermal"]
        assert "power" in status["daemon"]["manual"] and "battery" in status["daemon"]["manual"]
        proc = subprocess.run([*cli, "--ignore", "thermal"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and "thermal and memory always apply" in proc.stderr

        assert daemon.terminate() == 0
        keys = notify.keys()
        order = [k for k in keys if k in ("READY", "STATUS", "WATCHDOG", "RELOADING",
                                          "STOPPING")]
        assert order[0] == "READY"
        stopping = order.index("STOPPING")
        assert set(order[stopping + 1:]) <= {"STATUS"}  # only the final "idle: stopped"
        first = {k: order.index(k) for k in ("READY", "STATUS", "WATCHDOG", "RELOADING",
                                            "STOPPING")}
        assert first["READY"] < first["WATCHDOG"] < first["RELOADING"] < first["STOPPING"]
        assert "STATUS" in order[:3]
    finally:
        daemon.kill()
        notify.close()


def test_invalid_config_at_start_exits_with_field_paths(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "agent.toml"
    bad.write_text("[training]\nq = 0\nbogus = 1\n[constraints]\nbattery_stop_pct = 90\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(bad),
                           "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    for path in ("training.q", "training.bogus", "constraints.battery_stop_pct"):
        assert path in proc.stderr
    assert "agent.toml:2" in proc.stderr  # where in the file


def test_missing_bundle_or_registry_is_a_clear_error(tmp_path: Path,
                                                     starter_bundle: Path) -> None:
    import subprocess
    import sys

    def run(text: str) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(text)
        return subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg),
                               "--state-dir", str(tmp_path / "state")],
                              capture_output=True, text=True, timeout=60)

    proc = run(f'[service]\nbundle_dir = "{tmp_path / "nope"}"\n')
    assert proc.returncode == 2
    assert "no model bundle" in proc.stderr and "mobizo-export" in proc.stderr
    proc = run(f'[service]\nbundle_dir = "{starter_bundle}"\n'
               f'[adapters]\nregistry_dir = "{tmp_path / "gone"}"\n')
    assert proc.returncode == 2
    assert "adapters.registry_dir" in proc.stderr and "does not exist" in proc.stderr
    # a corrupt active pointer names the repair
    reg = tmp_path / "state" / "adapters"
    reg.mkdir(parents=True)
    (reg / "active").write_text("{not json")
    proc = run(f'[service]\nbundle_dir = "{starter_bundle}"\n')
    assert proc.returncode == 2
    assert "adapters activate" in proc.stderr or "adapters rollback" in proc.stderr


@pytest.mark.broker
def test_fleet_link_drives_the_real_daemon(tmp_path: Path, device: FakeDevice,
                                           starter_bundle: Path, broker: object,
                                           sub_factory: object, fleet: str) -> None:
    """[mqtt].enabled starts the link with the daemon's CommandHandler / StateSource /
    DesiredConfigSink: state is published, pause works, a desired config is applied."""
    import json as _json

    from agent.core.topics import DeviceTopics
    from tests.integration.conftest import FAST

    device.plug(False)
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port,  # type: ignore[attr-defined]
            "fleet": fleet, "device_id": "dev1", **FAST}
    sections = base_config(tmp_path, device, starter_bundle, mqtt=mqtt)
    cfg = write_config(tmp_path / "agent.toml", sections)
    topics = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(topics.prefix + "/#")  # type: ignore[operator]
    daemon = DaemonProcess(cfg, tmp_path / "state", tmp_path / "daemon.log")
    try:
        sub.wait_json(topics.available, lambda d: d["status"] == "online", 60)
        state_sub = sub_factory(topics.state)  # type: ignore[operator]  # retained: replayed
        state_sub.wait_json(topics.state, lambda d: d["state"] == "waiting"
                            and "on battery" in d["reason"], 20)
        sub.publish(topics.cmd("pause"), _json.dumps({"request_id": "p1",
                                                      "args": {"reason": "fleet hold"}}))
        reply = sub.wait_json(topics.cmd_result("p1"), timeout=20)
        assert reply["ok"], reply
        daemon.wait_status(lambda s: s["state"] == "paused" and "fleet hold" in s["reason"], 20)
        state_sub.wait_json(topics.state, lambda d: d["state"] == "paused", 20)

        desired = {"version": 3, "config": {"constraints": {"idle_minutes": 7.0}}}
        sub.publish(topics.config_desired, _json.dumps(desired), retain=True)
        reported = sub.wait_json(topics.config_reported, lambda d: d.get("version") == 3, 20)
        assert reported["status"] == "applied", reported
        overrides = _json.loads((tmp_path / "state" / "overrides.json").read_text())
        assert "7.0" in _json.dumps(overrides) or "7" in _json.dumps(overrides)
        bad = {"version": 4, "config": {"constraints": {"idle_minutes": -1}}}
        sub.publish(topics.config_desired, _json.dumps(bad), retain=True)
        reported = sub.wait_json(topics.config_reported,
                                 lambda d: d.get("rejected_version") == 4, 20)
        assert any("idle_minutes" in e for e in reported["errors"]), reported
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.publish(topics.config_desired, b"", retain=True)

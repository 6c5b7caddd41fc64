"""Home Assistant discovery with the real daemon: the bundle's model and the numeric SoC
temperature are announced, the buttons reach the daemon's own handlers, and a SIGHUP reload
with the feature turned off clears the configs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from agent.core.ha_discovery import REPLY_ID
from agent.core.topics import DeviceTopics
from tests.integration.conftest import FAST
from tests.integration.daemon_support import DaemonProcess, FakeDevice, base_config, write_config

pytestmark = [pytest.mark.runtime, pytest.mark.broker]


def _configs(sub, prefix: str, count: int, timeout: float) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count:
        msg = sub.wait(lambda m: m.topic.startswith(prefix + "/"), deadline - time.monotonic())
        got[msg.topic] = msg.payload
    return got


def test_real_daemon_announces_obeys_buttons_and_clears_on_reload(
    tmp_path: Path, starter_bundle: Path, broker: object, sub_factory: object, fleet: str
) -> None:
    device = FakeDevice(tmp_path / "device")
    device.plug(False)  # on battery: no burst starts by itself
    device.heat(47.2)
    prefix = f"ha-{fleet}"
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port,  # type: ignore[attr-defined]
            "fleet": fleet, "device_id": "dev1", **FAST}
    sections = base_config(tmp_path, device, starter_bundle, mqtt=mqtt)
    sections["mqtt.home_assistant"] = {"enabled": True, "discovery_prefix": prefix}
    cfg = write_config(tmp_path / "agent.toml", sections)
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(f"{prefix}/#")  # type: ignore[operator]
    dev = sub_factory(t.state, t.cmd_result(REPLY_ID))  # type: ignore[operator]
    daemon = DaemonProcess(cfg, tmp_path / "state", tmp_path / "daemon.log")
    try:
        configs = {k: json.loads(v) for k, v in _configs(sub, prefix, 7, 60).items()}
        model = configs[f"{prefix}/sensor/dev1/temperature/config"]["device"]["model"]
        assert "starter" in model, model
        dev.wait_json(t.state, lambda d: d["constraints"]["temp_c"] == 47.0, 20)

        def press(key: str, command: str) -> dict:
            button = configs[f"{prefix}/button/dev1/{key}/config"]
            dev.publish(button["command_topic"], button["payload_press"])  # type: ignore[attr-defined]
            return dev.wait_json(t.cmd_result(REPLY_ID),  # type: ignore[attr-defined]
                                 lambda d: d["command"] == command, 20)

        assert press("pause", "pause")["ok"]
        dev.wait_json(t.state, lambda d: d["state"] == "paused", 20)
        assert press("resume", "resume")["ok"]
        dev.wait_json(t.state, lambda d: d["state"] != "paused", 20)
        job = press("train_now", "train-now")  # accepted as a job; on battery it is refused
        assert job["job"] is not None, job

        sections["mqtt.home_assistant"]["enabled"] = False
        write_config(cfg, sections)
        daemon.proc.send_signal(signal.SIGHUP)
        cleared = _configs(sub, prefix, 7, 30)
        assert set(cleared) == set(configs) and set(cleared.values()) == {b""}
        assert daemon.terminate() == 0
    finally:
        daemon.terminate()

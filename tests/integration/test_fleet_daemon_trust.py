"""Desired config against the real daemon: local-only keys and loosened guards are refused by
name and never saved; saved overrides that fail at boot are dropped and reported (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import write_overrides
from agent.core.topics import DeviceTopics
from tests.integration.conftest import FAST
from tests.integration.daemon_support import DaemonProcess, FakeDevice, base_config, write_config

pytestmark = [pytest.mark.runtime, pytest.mark.broker]


def test_real_daemon_refuses_local_only_and_looser_desired_config(
    tmp_path: Path, starter_bundle: Path, broker: object, sub_factory: object, fleet: str
) -> None:
    device = FakeDevice(tmp_path / "device")
    device.plug(False)  # no burst: this test is about config only
    state = tmp_path / "state"
    # An older agent saved this from one retained desired config: the boot must not obey it.
    write_overrides(state / "overrides.json",
                    {"device": {"sysfs_root": "/nonexistent"}, "mqtt": {"port": 1}}, version=3)
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port,  # type: ignore[attr-defined]
            "fleet": fleet, "device_id": "dev1", **FAST}
    cfg = write_config(tmp_path / "agent.toml", base_config(tmp_path, device, starter_bundle,
                                                            mqtt=mqtt))
    topics = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(topics.config_reported, topics.available)  # type: ignore[operator]
    daemon = DaemonProcess(cfg, state, tmp_path / "daemon.log")
    try:
        sub.wait_json(topics.available, lambda d: d["status"] == "online", 60)
        boot = sub.wait_json(topics.config_reported, lambda d: d["status"] == "rejected", 20)
        assert boot["version"] is None and boot["rejected_version"] is None, boot
        assert "device.sysfs_root" in boot["errors"][0] and "mqtt.port" in boot["errors"][0]
        assert "ignored runtime overrides" in daemon.log()
        attacks = [
            ("device.sysfs_root", {"device": {"sysfs_root": "/nonexistent"}}),
            ("constraints.min_available_memory_mb",
             {"constraints": {"min_available_memory_mb": 0, "stop_available_memory_mb": 0}}),
            ("paths.state_dir", {"paths": {"state_dir": str(tmp_path / "elsewhere")}}),
            ("mqtt.host", {"mqtt": {"host": "broker.evil.example"}}),
        ]
        for version, (key, config) in enumerate(attacks, start=10):
            doc = {"version": version, "config": {"training": {"lr": 0.03}, **config}}
            sub.publish(topics.config_desired, json.dumps(doc), retain=True)  # type: ignore[attr-defined]
            rep = sub.wait_json(topics.config_reported,  # type: ignore[attr-defined]
                                lambda d, v=version: d.get("rejected_version") == v, 20)
            assert any(e.startswith(key + ":") for e in rep["errors"]), (key, rep)
        overrides = json.loads((state / "overrides.json").read_text())
        assert overrides["version"] == 3  # nothing refused was saved over it
        good = {"version": 20, "config": {"constraints": {"min_available_memory_mb": 300}}}
        sub.publish(topics.config_desired, json.dumps(good), retain=True)  # type: ignore[attr-defined]
        rep = sub.wait_json(topics.config_reported,  # type: ignore[attr-defined]
                            lambda d: d.get("version") == 20, 20)
        assert rep["status"] == "applied", rep
        saved = json.loads((state / "overrides.json").read_text())
        assert saved == {"format_version": 1, "version": 20,
                         "overrides": {"constraints": {"min_available_memory_mb": 300}}}
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        sub.publish(topics.config_desired, b"", retain=True)  # type: ignore[attr-defined]

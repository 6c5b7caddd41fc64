"""Desired config over MQTT: valid applied and reported, invalid rejected, stale ignored."""

from __future__ import annotations

import json

import pytest

from agent.core.topics import DeviceTopics
from tests.integration.conftest import mqtt_config

pytestmark = pytest.mark.broker


def _applies(device) -> list[int]:
    path = device.state_dir / "calls.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(x)["version"]
        for x in path.read_text().splitlines()
        if json.loads(x)["call"] == "apply"
    ]


def test_valid_invalid_and_stale_desired_config(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.config_reported)

    sub.publish(t.config_desired, json.dumps({"version": 2, "config": {"lr": 0.001}}), retain=True)
    rep = sub.wait_json(t.config_reported, lambda d: d["version"] == 2)
    assert rep["status"] == "applied" and device.overrides == {"lr": 0.001}

    # Invalid: rejected with the errors; the version in effect stays 2.
    sub.publish(
        t.config_desired, json.dumps({"version": 3, "config": {"lr": "fast", "x": 1}}), retain=True
    )
    rep = sub.wait_json(t.config_reported, lambda d: d.get("rejected_version") == 3)
    assert rep["status"] == "rejected" and rep["version"] == 2
    assert any("lr" in e for e in rep["errors"]) and any("x: unknown" in e for e in rep["errors"])

    # Malformed documents are rejected too, never crash the link.
    for bad in (
        b"{not json",
        json.dumps({"version": "four", "config": {}}).encode(),
        json.dumps({"config": {}}).encode(),
        b"x" * 70_000,
    ):
        sub.publish(t.config_desired, bad, retain=True)
        rep = sub.wait_json(
            t.config_reported,
            lambda d: d["status"] == "rejected" and d.get("rejected_version") is None,
        )
        assert rep["errors"] and rep["version"] == 2

    # Stale: version 1 (< 2 applied) is reported stale and not applied; 2 (== applied, the
    # retained document redelivered on a reconnect) is a silent no-op.
    sub.drain(0.2)
    sub.publish(t.config_desired, json.dumps({"version": 1, "config": {"lr": 9.0}}), retain=True)
    rep = sub.wait_json(t.config_reported, lambda d: d.get("rejected_version") == 1)
    assert rep["version"] == 2 and "stale" in rep["errors"][0] and "reset" in rep["errors"][0]
    sub.publish(t.config_desired, json.dumps({"version": 2, "config": {"lr": 9.0}}), retain=True)
    assert sub.drain(0.7) == []
    assert device.overrides == {"lr": 0.001} and _applies(device) == [2, 3]

    sub.publish(
        t.config_desired, json.dumps({"version": 7, "config": {"max_steps": 5}}), retain=True
    )
    assert sub.wait_json(t.config_reported, lambda d: d["version"] == 7)["status"] == "applied"
    sub.publish(t.config_desired, b"", retain=True)

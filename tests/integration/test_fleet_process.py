"""The link hosted in its own process: Last Will on kill -9, ``stopped`` on SIGTERM, restarts."""

from __future__ import annotations

import json
import signal

import pytest

from agent.core.topics import DeviceTopics
from tests.integration.conftest import mqtt_config, wait_online

pytestmark = pytest.mark.broker


def test_will_on_kill9_then_new_session_seq(broker, fleet, agent_factory, sub_factory, tmp_path):
    config = mqtt_config(broker, fleet)
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.available, t.state)
    agent = agent_factory(config, state_dir=tmp_path / "a")
    # On connect the retained state goes first, then the birth.
    state = sub.wait_json(t.state, timeout=20)
    birth = sub.wait_json(t.available, lambda d: d["status"] == "online", timeout=5)
    assert state["session_seq"] == birth["session_seq"]
    agent.proc.kill()  # SIGKILL: no goodbye; the broker publishes the will
    agent.proc.wait(5)
    will = sub.wait_json(t.available, lambda d: d["status"] == "offline", timeout=15)
    assert will["session_seq"] == birth["session_seq"]
    # The will is retained: a controller arriving now sees the device offline.
    late = sub_factory(t.available)
    assert late.wait_json(t.available)["status"] == "offline"
    # A restarted agent starts a new session: its birth has a larger seq, so the old
    # will can be told apart from a new one.
    agent_factory(config, state_dir=tmp_path / "a")
    again = sub.wait_json(t.available, lambda d: d["status"] == "online", timeout=20)
    assert again["session_seq"] > birth["session_seq"]


def test_sigterm_publishes_stopped_and_no_will(broker, fleet, agent_factory, sub_factory):
    config = mqtt_config(broker, fleet)
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.available)
    agent = agent_factory(config)
    birth = sub.wait_json(t.available, lambda d: d["status"] == "online", timeout=20)
    assert agent.signal(signal.SIGTERM) == 0
    stopped = sub.wait_json(t.available, lambda d: d["status"] != "online", timeout=10)
    assert stopped == {**stopped, "status": "stopped", "session_seq": birth["session_seq"]}
    # A clean DISCONNECT discards the will: no 'offline' follows.
    assert [json.loads(m.payload)["status"] for m in sub.drain(1.0)] == []
    late = sub_factory(t.available)
    assert late.wait_json(t.available)["status"] == "stopped"


def test_desired_config_survives_agent_restart(broker, fleet, agent_factory, sub_factory, tmp_path):
    config = mqtt_config(broker, fleet)
    t = DeviceTopics.for_device(fleet, "dev1")
    sd = tmp_path / "agent"
    sub = sub_factory(t.config_reported)
    agent = agent_factory(config, state_dir=sd)
    wait_online(config, "dev1")
    sub.publish(
        t.config_desired, json.dumps({"version": 3, "config": {"max_steps": 50}}), retain=True
    )
    rep = sub.wait_json(t.config_reported, lambda d: d["version"] == 3, timeout=10)
    assert rep["status"] == "applied" and rep["errors"] == []
    assert agent.signal(signal.SIGTERM) == 0
    seq_before = json.loads((sd / "overrides.json").read_text())
    assert seq_before == {"max_steps": 50}
    agent_factory(config, state_dir=sd)
    wait_online(config, "dev1", min_seq=1)
    # The retained desired v3 is delivered again but is not newer than what was applied:
    # ignored, not re-applied; the persisted report is republished.
    rep = sub.wait_json(t.config_reported, lambda d: d["version"] == 3, timeout=10)
    assert rep["status"] == "applied"
    applies = [
        json.loads(line)
        for line in (sd / "calls.jsonl").read_text().splitlines()
        if json.loads(line)["call"] == "apply"
    ]
    assert [a["version"] for a in applies] == [3]
    state_sub = sub_factory(t.state)
    state = state_sub.wait_json(t.state)
    assert json.loads(state["versions"]["overrides"]) == {"max_steps": 50}
    sub.publish(t.config_desired, b"", retain=True)

"""Jobs that wait and end (issue 19 item 3), against the real mosquitto.

- a persistent session: a QoS 1 command sent while the device is offline reaches it when it
  comes back within the session expiry, and not after it (MQTT 5; MQTT 3.1.1 keeps it);
- ``cancel`` at each job state: queued (never runs), running (stops at its next step), already
  finished (a clear error), unknown (a clear error); ``remove`` (REMOVED, retained cleared);
- ``ack-jobs``: the retained ``jobs/<id>`` message of a finished job is cleared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.controller.client import BrokerOptions, FleetClient
from agent.core.commands import CommandResult
from agent.core.topics import DeviceTopics
from tests.integration.conftest import Sub, mqtt_config

pytestmark = pytest.mark.broker


@pytest.fixture()
def controller(broker, fleet) -> Iterator[FleetClient]:
    with FleetClient(BrokerOptions(host=broker.host, port=broker.port, fleet=fleet)) as fc:
        yield fc


def _calls(state_dir: Path, name: str) -> int:
    path = state_dir / "calls.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(x)["call"] == name for x in path.read_text().splitlines())


def _ask(fc: FleetClient, name: str, args: dict[str, Any], **kw: Any) -> CommandResult:
    return fc.request("dev1", name, args, timeout=5.0, **kw)


def _retained(broker, topic: str, within: float = 0.5) -> list[dict[str, Any]]:
    """What a fresh subscriber is handed for ``topic`` (its retained message, if any)."""
    sub = Sub(broker, topic)
    try:
        return [json.loads(m.payload) for m in sub.drain(within) if m.payload]
    finally:
        sub.close()


def _away_then_back(link_factory, config, tmp_path: Path, controller: FleetClient,
                    away_s: float) -> tuple[Path, str]:
    """Connect once (the broker learns the session), stop, send a train-now, come back."""
    link, _ = link_factory(config)
    link.stop()
    job_id = f"away-{away_s}"
    controller.send("dev1", "train-now", {"max_steps": 2}, job_id=job_id)
    time.sleep(away_s)
    link_factory(config, state_dir=tmp_path / "dev1")
    return tmp_path / "dev1", job_id


def test_a_command_sent_while_offline_arrives_within_the_session_expiry(
        broker, fleet, link_factory, controller, tmp_path):
    config = mqtt_config(broker, fleet, session_expiry_s=2)
    state_dir, job_id = _away_then_back(link_factory, config, tmp_path, controller, 0.3)
    job = controller.wait_job("dev1", job_id, timeout=10)
    assert job["status"] == "SUCCEEDED" and job["result"]["steps"] == 2
    assert _calls(state_dir, "train_now") == 1


def test_not_after_the_session_expired(broker, fleet, link_factory, controller, tmp_path):
    config = mqtt_config(broker, fleet, session_expiry_s=2)
    state_dir, job_id = _away_then_back(link_factory, config, tmp_path, controller, 4.0)
    time.sleep(1.5)  # it is online (birth seen): a queued command would have come by now
    assert _calls(state_dir, "train_now") == 0
    assert _retained(broker, DeviceTopics.for_device(fleet, "dev1").job(job_id)) == []


def test_a_clean_session_loses_what_was_sent_while_offline(
        broker, fleet, link_factory, controller, tmp_path):
    # session_expiry_s = 0 is the old behaviour, kept for brokers that must hold no state.
    config = mqtt_config(broker, fleet, session_expiry_s=0)
    state_dir, _ = _away_then_back(link_factory, config, tmp_path, controller, 0.3)
    time.sleep(1.5)
    assert _calls(state_dir, "train_now") == 0


def test_mqtt311_persistent_session_keeps_commands(
        broker, fleet, link_factory, controller, tmp_path):
    # 3.1.1 has no session expiry: clean session off keeps it until the broker's own limit.
    config = mqtt_config(broker, fleet, protocol="3.1.1", session_expiry_s=2)
    state_dir, job_id = _away_then_back(link_factory, config, tmp_path, controller, 0.3)
    assert controller.wait_job("dev1", job_id, timeout=10)["status"] == "SUCCEEDED"
    assert _calls(state_dir, "train_now") == 1


def test_cancel_at_each_job_state(broker, fleet, link_factory, controller):
    link, device = link_factory(mqtt_config(broker, fleet), step_s=0.05)
    t = DeviceTopics.for_device(fleet, "dev1")
    running = _ask(controller, "train-now", {"max_steps": 400}, job_id="long")
    queued = _ask(controller, "train-now", {"max_steps": 3}, job_id="next")
    assert queued.job is not None and queued.job.status == "QUEUED"
    # queued: CANCELED at once, and it never runs
    result = _ask(controller, "cancel", {"job_id": "next"})
    assert result.ok and result.job is not None and result.job.status == "CANCELED"
    assert result.job.error is not None and result.job.error.code == "canceled"
    # running: asked to stop; it stops at its next step (0.05 s) and ends CANCELED
    assert running.job is not None
    started = time.monotonic()
    result = _ask(controller, "cancel", {"job_id": "long"})
    assert result.ok and result.job is not None and "cancel requested" in result.job.message
    job = controller.wait_job("dev1", "long", timeout=10)
    assert job["status"] == "CANCELED" and time.monotonic() - started < 3
    assert 0 < job["result"]["steps"] < 400  # what it did before it stopped
    assert device.last_burst is not None and device.last_burst.outcome == "stopped"
    time.sleep(0.3)
    assert _calls(device.state_dir, "train_now") == 1  # "next" never ran
    assert _retained(broker, t.job("next"))[0]["status"] == "CANCELED"
    # already terminal: a clear error naming its state; the job is unchanged
    result = _ask(controller, "cancel", {"job_id": "long"})
    assert not result.ok and result.error is not None and result.error.code == "rejected"
    assert "already CANCELED; nothing to cancel" in result.error.message
    done = _ask(controller, "train-now", {"max_steps": 1}, job_id="quick")
    assert done.job is not None
    assert controller.wait_job("dev1", "quick", timeout=10)["status"] == "SUCCEEDED"
    result = _ask(controller, "cancel", {"job_id": "quick"})
    assert not result.ok and "already SUCCEEDED" in result.error.message  # type: ignore[union-attr]
    # unknown: says so
    result = _ask(controller, "cancel", {"job_id": "never-sent"})
    assert not result.ok and "no job 'never-sent'" in result.error.message  # type: ignore[union-attr]


def test_remove_clears_the_retained_message_at_once(broker, fleet, link_factory, controller):
    link, device = link_factory(mqtt_config(broker, fleet), step_s=0.05)
    t = DeviceTopics.for_device(fleet, "dev1")
    _ask(controller, "train-now", {"max_steps": 400}, job_id="busy")
    _ask(controller, "train-now", {"max_steps": 3}, job_id="drop-me")
    controller.subscribe(t.job("drop-me"))
    result = _ask(controller, "cancel", {"job_id": "drop-me", "remove": True})
    assert result.ok and result.job is not None and result.job.status == "REMOVED"
    assert _retained(broker, t.job("drop-me")) == []
    # removing the running one: REMOVED once it stopped, then cleared too
    _ask(controller, "cancel", {"job_id": "busy", "remove": True})
    assert controller.wait_job("dev1", "busy", timeout=10)["status"] == "REMOVED"
    time.sleep(0.3)
    assert _retained(broker, t.job("busy")) == []


def test_ack_clears_finished_jobs_only(broker, fleet, link_factory, controller):
    link, device = link_factory(mqtt_config(broker, fleet), step_s=0.05)
    t = DeviceTopics.for_device(fleet, "dev1")
    _ask(controller, "train-now", {"max_steps": 2}, job_id="done")
    controller.wait_job("dev1", "done", timeout=10)
    assert _retained(broker, t.job("done"))[0]["status"] == "SUCCEEDED"
    _ask(controller, "train-now", {"max_steps": 400}, job_id="going")
    result = _ask(controller, "ack-jobs", {"job_ids": ["done", "going", "gone"]})
    assert result.result == {"cleared": ["done"], "not_terminal": ["going"], "unknown": ["gone"]}
    assert not result.ok and "going not finished" in result.error.message  # type: ignore[union-attr]
    assert _retained(broker, t.job("done")) == []
    assert _retained(broker, t.job("going"))[0]["status"] in ("QUEUED", "IN_PROGRESS")
    # again: idempotent (a QoS 1 redelivery after a reconnect does no harm)
    assert _ask(controller, "ack-jobs", {"job_ids": ["done"]}).ok
    # a cleared job is still known: its id is never run twice
    again = _ask(controller, "train-now", {"max_steps": 2}, job_id="done")
    assert again.duplicate and again.job is not None and again.job.status == "SUCCEEDED"
    assert _retained(broker, t.job("done")) == []
    _ask(controller, "cancel", {"job_id": "going"})
    controller.wait_job("dev1", "going", timeout=10)


def test_bad_cancel_and_ack_requests_are_refused_with_a_reason(
        broker, fleet, link_factory, controller):
    link_factory(mqtt_config(broker, fleet))
    result = _ask(controller, "cancel", {})
    assert not result.ok and result.error is not None and result.error.code == "bad_request"
    assert "job_id" in result.error.message
    result = _ask(controller, "ack-jobs", {"job_ids": ["a/b"]})
    assert not result.ok and "job_ids" in result.error.message  # type: ignore[union-attr]
    result = _ask(controller, "ack-jobs", {"job_ids": []})
    assert not result.ok and result.error.code == "bad_request"  # type: ignore[union-attr]

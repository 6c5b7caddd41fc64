"""The fleet link end to end against a real mosquitto: birth, state, commands, jobs, bad input."""

from __future__ import annotations

import json
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.controller.simulator import SimDevice
from agent.core.topics import DeviceTopics, FleetTopics
from tests.integration.conftest import mqtt_config

pytestmark = pytest.mark.broker


def _ctl(fleet: str) -> str:
    """A reply topic in the controllers' namespace (the only one a device answers to)."""
    return FleetTopics(fleet).controller_reply(f"ctl-{uuid.uuid4().hex[:8]}")


def _request(
    sub,
    topic: str,
    body: dict | bytes,
    *,
    reply: str | None = None,
    corr: bytes | None = None,
    expiry: int | None = None,
) -> None:
    props = None
    if reply or corr or expiry:
        props = Properties(PacketTypes.PUBLISH)
        if reply:
            props.ResponseTopic = reply
        if corr:
            props.CorrelationData = corr
        if expiry:
            props.MessageExpiryInterval = expiry
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    sub.publish(topic, payload, properties=props)


def _reply_to(sub, topic: str, corr: bytes | None = None, timeout: float = 5.0) -> dict:
    def ok(m: paho.MQTTMessage) -> bool:
        if m.topic != topic:
            return False
        return corr is None or bytes(getattr(m.properties, "CorrelationData", b"")) == corr

    return json.loads(sub.wait(ok, timeout).payload)


def test_birth_and_retained_state(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.available, t.state)
    birth = sub.wait_json(t.available, lambda d: d["status"] == "online")
    state = sub.wait_json(t.state)
    assert birth["session_seq"] == link.session_seq == state["session_seq"]
    assert state["state"] == "idle" and state["store_counts"] == {"interactions": 100}
    # On change: the link notices within the poll interval and republishes, retained.
    device.state = "paused"
    sub.wait_json(t.state, lambda d: d["state"] == "paused")
    late = sub_factory(t.state)  # a late subscriber gets the retained latest state
    assert late.wait_json(t.state)["state"] == "paused"


def test_every_command_from_plain_mqtt5_client(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply, t.job("+"))
    cases = [
        ("status", {}, lambda r: r["result"]["state"] == "idle"),
        ("pause", {"reason": "maintenance"}, lambda r: r["result"]["message"] == "paused"),
        ("resume", {}, lambda r: r["ok"]),
        (
            "set-log-level",
            {"level": "debug"},
            lambda r: r["result"]["message"] == "log level DEBUG",
        ),
        ("train-now", {"max_steps": 5}, lambda r: r["job"]["status"] in ("QUEUED", "IN_PROGRESS")),
        ("rollback", {}, lambda r: r["job"] is not None),
        ("purge-data", {"before": "2030-01-01T00:00:00Z"}, lambda r: r["job"] is not None),
    ]
    for name, args, check in cases:
        corr = uuid.uuid4().bytes
        _request(sub, t.cmd(name), {"args": args}, reply=reply, corr=corr)
        result = _reply_to(sub, reply, corr)
        assert result["ok"], result
        assert result["command"] == name and result["device_id"] == "dev1"
        assert check(result), result
        if result.get("job"):
            job = sub.wait_json(
                t.job(result["job"]["job_id"]), lambda d: d["status"] in ("SUCCEEDED", "FAILED")
            )
            assert job["status"] == "SUCCEEDED", job
    calls = [
        json.loads(x)["call"] for x in (device.state_dir / "calls.jsonl").read_text().splitlines()
    ]
    assert calls == [
        "status",
        "pause",
        "resume",
        "set_log_level",
        "train_now",
        "rollback",
        "purge_data",
    ]


def test_mqtt311_client_gets_reply_on_request_id_topic(broker, fleet, link_factory, sub_factory):
    link, _ = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    custom = _ctl(fleet)
    sub = sub_factory(t.cmd_result("r-311"), custom, protocol=paho.MQTTv311)
    sub.publish(t.cmd("status"), json.dumps({"request_id": "r-311"}))
    assert sub.wait_json(t.cmd_result("r-311"))["request_id"] == "r-311"
    sub.publish(t.cmd("status"), json.dumps({"request_id": "r-2", "reply_to": custom}))
    assert sub.wait_json(custom)["request_id"] == "r-2"


def test_link_runs_over_mqtt311_too(broker, fleet, link_factory, sub_factory):
    link, _ = link_factory(mqtt_config(broker, fleet, protocol="3.1.1"))
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.available, t.cmd_result("q"))
    sub.wait_json(t.available, lambda d: d["status"] == "online")
    sub.publish(t.cmd("status"), json.dumps({"request_id": "q"}))
    assert sub.wait_json(t.cmd_result("q"))["ok"]


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("status", b"not json {", "bad_request"),
        ("status", b"[1, 2]", "bad_request"),
        ("pause", json.dumps({"args": {"reason": 5}}).encode(), "bad_request"),
        ("set-log-level", json.dumps({"args": {"level": "LOUD"}}).encode(), "bad_request"),
        ("train-now", json.dumps({"args": {"max_steps": "many"}}).encode(), "bad_request"),
        ("status", json.dumps({"args": {}, "surprise": 1}).encode(), "bad_request"),
        ("self-destruct", b"{}", "unknown_command"),
        ("status", json.dumps({"expires_at": time.time() - 60}).encode(), "expired"),
        ("status", json.dumps({"expires_at": "2001-01-01T00:00:00Z"}).encode(), "expired"),
        ("status", b"x" * 70_000, "payload_too_large"),
        ("rollback", json.dumps({"args": {"version": 99}}).encode(), None),
    ],
)
def test_bad_input_gets_error_result_and_link_keeps_serving(
    broker, fleet, link_factory, sub_factory, name, payload, code
):
    link, _ = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply, t.job("+"))
    corr = b"\x00\x01bad"
    _request(sub, t.cmd(name), payload, reply=reply, corr=corr)
    result = _reply_to(sub, reply, corr)
    if code is None:  # accepted as a job, which then fails with a clear message
        job = sub.wait_json(t.job(result["job"]["job_id"]), lambda d: d["status"] == "FAILED")
        assert "does not exist" in job["error"]["message"]
    else:
        assert not result["ok"] and result["error"]["code"] == code, result
    _request(sub, t.cmd("status"), {}, reply=reply, corr=b"after")
    assert _reply_to(sub, reply, b"after")["ok"]


class _SlowStatus(SimDevice):
    def status(self):  # keeps the worker busy so the next request waits in the inbox
        time.sleep(2.0)
        return super().status()


def test_mqtt5_message_expiry_is_honoured(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet), device_cls=_SlowStatus)
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    _request(sub, t.cmd("status"), {}, reply=reply, corr=b"slow")
    # Expires 1 s after delivery, while the worker is still busy with the slow status.
    _request(sub, t.cmd("pause"), {}, reply=reply, corr=b"exp", expiry=1)
    result = _reply_to(sub, reply, b"exp", timeout=10)
    assert result["error"]["code"] == "expired"
    assert device.state != "paused"
    _request(sub, t.cmd("pause"), {}, reply=reply, corr=b"ok", expiry=30)
    assert _reply_to(sub, reply, b"ok", timeout=10)["ok"]


def test_other_devices_topics_are_ignored(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet))
    other = DeviceTopics.for_device(fleet, "dev2")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    _request(sub, other.cmd("pause"), {}, reply=reply, corr=b"x")
    _request(sub, other.config_desired, {"version": 1, "config": {"lr": 0.1}})
    assert sub.drain(0.5) == []
    assert not (device.state_dir / "calls.jsonl").exists()
    sub.publish(other.config_desired, b"", retain=True)


def test_duplicate_job_id_never_runs_twice(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply, t.job("job-7"))
    body = {"request_id": "r1", "job_id": "job-7", "args": {"max_steps": 3}}
    _request(sub, t.cmd("train-now"), body, reply=reply, corr=b"1")
    first = _reply_to(sub, reply, b"1")
    assert first["ok"] and not first["duplicate"]
    sub.wait_json(t.job("job-7"), lambda d: d["status"] == "SUCCEEDED")
    _request(sub, t.cmd("train-now"), body, reply=reply, corr=b"2")
    second = _reply_to(sub, reply, b"2")
    assert second["duplicate"] and second["job"]["status"] == "SUCCEEDED"
    calls = (device.state_dir / "calls.jsonl").read_text().splitlines()
    assert sum(json.loads(c)["call"] == "train_now" for c in calls) == 1


def test_job_timeout_and_rejection_are_terminal(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet, job_timeout_s=0.5), step_s=0.2)
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply, t.job("+"))
    _request(sub, t.cmd("train-now"), {"job_id": "slow", "args": {"max_steps": 50}}, reply=reply)
    job = sub.wait_json(t.job("slow"), lambda d: d["status"] not in ("QUEUED", "IN_PROGRESS"))
    assert job["status"] == "TIMED_OUT"
    device.state = "paused"
    _request(sub, t.cmd("train-now"), {"job_id": "refused", "args": {"max_steps": 1}}, reply=reply)
    job = sub.wait_json(t.job("refused"), lambda d: d["status"] not in ("QUEUED", "IN_PROGRESS"))
    assert job["status"] == "REJECTED" and "paused" in job["error"]["message"]


def test_burst_of_1000_commands_all_answered(broker, fleet, link_factory, sub_factory):
    # A controller sending a burst: the per-topic rate limit is set to let it through.
    link, _ = link_factory(mqtt_config(broker, fleet, inbound_burst=1000))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    infos = []
    for i in range(1000):
        props = Properties(PacketTypes.PUBLISH)  # paho may pack a queued message later
        props.ResponseTopic = reply
        props.CorrelationData = i.to_bytes(4, "big")
        infos.append(sub.client.publish(t.cmd("status"), b"{}", qos=1, properties=props))
    for info in infos:
        info.wait_for_publish(10)
    got: set[int] = set()
    deadline = time.monotonic() + 30
    while len(got) < 1000 and time.monotonic() < deadline:
        for m in sub.drain(0.5):
            assert json.loads(m.payload)["ok"]
            got.add(int.from_bytes(m.properties.CorrelationData, "big"))
    assert got == set(range(1000))


def test_mosquitto_rr_round_trip_with_correlation_data(broker, fleet, link_factory):
    import shutil
    import subprocess

    if shutil.which("mosquitto_rr") is None:
        pytest.skip("mosquitto-clients not installed")
    link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    out = subprocess.run(
        [
            "mosquitto_rr",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            t.cmd("status"),
            "-e",
            FleetTopics(fleet).controller_reply("rr"),
            "-m",
            '{"request_id": "rr-1"}',
            "-W",
            "5",
            "-D",
            "publish",
            "correlation-data",
            "corr-42",
            "-F",
            "%D|%p",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert out.returncode == 0, out.stderr
    corr, _, payload = out.stdout.strip().partition("|")
    assert corr == "corr-42"
    result = json.loads(payload)
    assert result["ok"] and result["request_id"] == "rr-1" and result["result"]["state"] == "idle"


def test_late_will_of_an_older_session_is_overridden(broker, fleet, link_factory, sub_factory):
    link, _ = link_factory(mqtt_config(broker, fleet))
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.available)
    sub.wait_json(t.available, lambda d: d["status"] == "online")
    # The broker delivers the will of a previous session late (e.g. after its keepalive ran
    # out), overwriting the retained birth of the current one.
    old = {"status": "offline", "session_seq": link.session_seq - 1, "device_id": "dev1"}
    sub.publish(t.available, json.dumps(old), retain=True)
    sub.wait_json(t.available, lambda d: d["status"] == "offline")
    again = sub.wait_json(t.available, lambda d: d["status"] == "online")
    assert again["session_seq"] == link.session_seq
    assert sub_factory(t.available).wait_json(t.available)["status"] == "online"


def test_controller_view_ignores_a_will_older_than_the_state():
    from agent.controller.client import DeviceView
    from agent.core.fleet_documents import Availability, StateDocument

    view = DeviceView(
        "d",
        Availability(status="offline", session_seq=4, device_id="d"),
        StateDocument(session_seq=5),
    )
    assert view.online
    view.available = Availability(status="offline", session_seq=5, device_id="d")
    assert not view.online
    view.available = Availability(status="stopped", session_seq=4, device_id="d")
    assert not view.online


def test_periodic_telemetry_carries_points_and_resources(broker, fleet, link_factory, sub_factory):
    link, _ = link_factory(
        mqtt_config(broker, fleet, telemetry_interval_s=0.2, telemetry_max_points=3)
    )
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.telemetry)
    sub.drain(0.3)
    for step in range(1, 6):
        link.record_point(step, 1.0 / step)
    msg = sub.wait(lambda m: m.topic == t.telemetry and json.loads(m.payload)["points"], 3)
    assert msg.qos == 0 and not msg.retain
    body = json.loads(msg.payload)
    assert [p["step"] for p in body["points"]] == [3, 4, 5]  # bounded: the newest points
    assert body["resources"]["rss_mb"] > 0 and body["session_seq"] == link.session_seq


def test_jobs_after_restart_resume_or_fail_explicitly(
    broker, fleet, link_factory, sub_factory, tmp_path
):
    from agent.core.jobs import JobStatus, new_job, transition
    from agent.io.fleet_store import FleetStore

    sd = tmp_path / "restarted"
    sd.mkdir()
    store = FleetStore(sd / "fleet.db")
    now = time.time()
    queued = new_job("q1", "purge-data", {"before": None}, request_id=None, now=now, timeout_s=60)
    running = transition(
        new_job("p1", "train-now", {"max_steps": 5}, request_id=None, now=now, timeout_s=60),
        JobStatus.IN_PROGRESS,
        now=now,
        progress=0.4,
    )
    store.insert_job(queued)
    store.insert_job(running)
    store.close()
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.job("+"))
    link, device = link_factory(mqtt_config(broker, fleet), state_dir=sd)
    final: dict[str, dict] = {}
    deadline = time.monotonic() + 10
    while len(final) < 2 and time.monotonic() < deadline:  # the two may come in either order
        for m in sub.drain(0.2):
            body = json.loads(m.payload)
            if body["status"] in ("FAILED", "SUCCEEDED"):
                final[body["job_id"]] = body
    assert final["p1"]["status"] == "FAILED" and "restart" in final["p1"]["message"]
    assert final["q1"]["status"] == "SUCCEEDED" and final["q1"]["result"] == {"deleted": 100}
    calls = [json.loads(x)["call"] for x in (sd / "calls.jsonl").read_text().splitlines()]
    assert calls == ["purge_data"]  # the interrupted train-now is not silently re-run

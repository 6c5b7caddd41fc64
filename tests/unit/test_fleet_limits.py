"""Inbound bounds of the fleet link: nesting depth, reply routes, rate, bytes, clear-text
passwords, the retained state's reason, desired-config versions."""

from __future__ import annotations

import json
import queue

import pytest
from pydantic import ValidationError

from agent.config.mqtt import MqttConfig
from agent.core.commands import ParseError, parse_command
from agent.core.fleet_documents import MAX_CONFIG_VERSION, DesiredConfig, fleet_reason
from agent.core.json_depth import json_depth_exceeds
from agent.core.topics import DeviceTopics, FleetTopics
from agent.io.mqtt_guard import ByteBoundedQueue, TopicRateLimiter, is_loopback_host


def test_json_depth_on_raw_bytes() -> None:
    assert not json_depth_exceeds(b'{"a": [1, {"b": []}]}', 4)
    assert json_depth_exceeds(b'{"a": [1, {"b": []}]}', 3)
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[\\"[[["}', 2)  # inside strings
    assert json_depth_exceeds(b"[" * 60_000 + b"]" * 60_000, 32)
    assert not json_depth_exceeds(b"[]" * 60_000, 1)  # wide is fine, deep is not


def test_60000_nested_brackets_are_a_bad_request_not_a_recursion_error() -> None:
    for payload in (b"[" * 60_000, b'{"args": {"x": ' + b"[" * 60_000 + b"]" * 60_000 + b"}}"):
        parsed = parse_command("status", payload, now=0.0, max_payload_bytes=1 << 20)
        assert isinstance(parsed, ParseError) and parsed.code == "bad_request"
        assert "deeper than 32" in parsed.message


def test_reply_routes_only_to_controllers_or_own_cmd_result() -> None:
    t = DeviceTopics.for_device("lab", "dev1")
    assert t.reply_allowed(FleetTopics("lab").controller_reply("mobizo-fleet-1"))
    assert t.reply_allowed(t.cmd_result("r-1"))
    for topic in (
        DeviceTopics.for_device("lab", "dev2").cmd("purge-data"),
        DeviceTopics.for_device("lab", "dev2").cmd_result("r-1"),
        t.cmd("pause"),
        t.state,
        "mobizo/v1/other/_controllers/c/reply",
        "mobizo/v1/lab/_controllers/",
        "mobizo/v1/lab/_controllers/+/reply",
        "mobizo/v1/lab/_controllers/a b",
        "custom/reply",
        "",
    ):
        assert not t.reply_allowed(topic), topic


def test_device_ids_never_take_the_controllers_namespace() -> None:
    with pytest.raises(ValueError, match="reserved"):
        DeviceTopics.for_device("lab", "_controllers")


def test_rate_limiter_per_topic_burst_then_rate() -> None:
    now = [0.0]
    rate = TopicRateLimiter(10.0, 5, clock=lambda: now[0], max_topics=2)
    assert [rate.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert rate.allow("b")  # another topic has its own bucket
    now[0] += 0.1  # one token back
    assert rate.allow("a") and not rate.allow("a")
    assert rate.dropped == 3
    for name in ("c", "d", "e"):
        rate.allow(name)
    assert len(rate._buckets) == 2  # bounded however many topic names a sender invents


def test_byte_bounded_queue() -> None:
    q = ByteBoundedQueue(100, 10, len)
    q.put_nowait(b"12345")
    q.put_nowait(b"1234")
    with pytest.raises(queue.Full):
        q.put_nowait(b"12")
    q.put_nowait(b"")  # a control event of no bytes still fits
    assert q.bytes_held == 9
    assert q.get_nowait() == b"12345"
    q.put_nowait(b"12")
    assert q.bytes_held == 6


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("10.0.0.1", "broker.example", "0.0.0.0", "localhost.evil.example"):
        assert not is_loopback_host(host), host


def test_password_only_over_tls_unless_loopback() -> None:
    with pytest.raises(ValidationError, match="clear text"):
        MqttConfig(enabled=True, host="broker.example", password_file="pw")
    MqttConfig(enabled=True, host="broker.example", password_file="pw", tls={"enabled": True})
    MqttConfig(enabled=True, host="127.0.0.1", password_file="pw")
    MqttConfig(enabled=False, host="broker.example", password_file="pw")  # not used


def test_desired_versions_are_bounded() -> None:
    doc = {"config": {}}
    assert DesiredConfig.model_validate({**doc, "version": MAX_CONFIG_VERSION}).version
    for bad in (10**30, 2**53, -1):
        with pytest.raises(ValidationError):
            DesiredConfig.model_validate_json(json.dumps({**doc, "version": bad}))


def test_state_reason_carries_no_log_line_or_quoted_text() -> None:
    secret = "my bank password is hunter2"
    log_line = f"ValueError: cannot tokenize row {secret!r} " + "x" * 300
    for reason in (
        f"waiting: last burst failed (trainer exited with code 1: {log_line})",
        f"evaluation killed by SIGKILL: {log_line}",
        f"paused: '{secret}'",
        "line one\n" + secret,
    ):
        out = fleet_reason(reason)
        assert secret not in out and "hunter2" not in out and len(out) <= 160, out
    assert fleet_reason("waiting: on battery 54% < 80%") == "waiting: on battery 54% < 80%"


def test_transport_refuses_a_clear_text_password_to_a_remote_broker(caplog) -> None:
    import time

    from agent.io.mqtt import MqttTransport, TransportSettings

    settings = TransportSettings(host="192.0.2.1", port=1883, client_id="x", password="secret")
    transport = MqttTransport(settings, queue.Queue(), subscriptions=[])
    started = time.monotonic()
    assert not transport._connect_once()  # refused before any packet leaves
    assert time.monotonic() - started < 1.0
    assert "clear text" in caplog.text

"""Broker restart while the link runs: reconnect, state then birth, spooled telemetry in order."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent.core.topics import DeviceTopics
from tests.integration.conftest import Sub, mqtt_config

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("telemetry_qos", [0, 1])
def test_broker_restart_republishes_and_drains_spool_in_order(
    restartable_broker, fleet, link_factory, telemetry_qos
):
    broker = restartable_broker
    # A fixed ~1 s reconnect delay so the observer below is subscribed before the link returns.
    config = mqtt_config(
        broker,
        fleet,
        telemetry_interval_s=0.1,
        telemetry_qos=telemetry_qos,
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
        reconnect_jitter=0.1,
    )
    link, device = link_factory(config)
    t = DeviceTopics.for_device(fleet, "dev1")
    first_seq = link.session_seq

    stop = threading.Event()

    def feed() -> None:  # the daemon's loss curve, one point every 20 ms
        step = 0
        while not stop.wait(0.02):
            step += 1
            link.record_point(step, 1.0 / step)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)
        broker.stop()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not link.connected
        device.state = "paused"  # a state change while offline goes to the spool
        time.sleep(1.5)
        spooled, _ = link.spool.stats()
        assert spooled >= 5
        assert link.spool.peek_state() is not None
        broker.start()
        obs = Sub(broker, t.available, t.state, t.telemetry)
        try:
            msgs = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                msgs += obs.drain(0.2)
                tele = [m for m in msgs if m.topic == t.telemetry]
                if len(tele) >= spooled + 3:
                    break
        finally:
            obs.close()
    finally:
        stop.set()
        feeder.join()

    fresh = [
        (m.topic, json.loads(m.payload), bool(m.retain))
        for m in msgs
        if not m.retain
        or m.topic != t.available
        or json.loads(m.payload)["session_seq"] > first_seq
    ]

    def first(topic: str, match, *, live_only: bool) -> int | None:
        return next((i for i, (tp, d, retained) in enumerate(fresh)
                     if tp == topic and match(d) and not (live_only and retained)), None)

    def is_paused(d):
        return d["state"] == "paused"

    def is_new_birth(d):
        return d["status"] == "online" and d["session_seq"] > first_seq

    # The new session's state comes first, then its birth, then the backlog. Publish order is
    # only visible in live deliveries: when the link reconnects before the observer has
    # subscribed, state and birth reach it as retained copies, in subscription order.
    assert first(t.state, is_paused, live_only=False) is not None
    assert first(t.available, is_new_birth, live_only=False) is not None
    i_state = first(t.state, is_paused, live_only=True)
    i_birth = first(t.available, is_new_birth, live_only=True)
    i_tele = next(i for i, (tp, _, _) in enumerate(fresh) if tp == t.telemetry)
    if i_state is not None and i_birth is not None:
        assert i_state < i_birth < i_tele
    tele = [d for tp, d, _ in fresh if tp == t.telemetry]
    assert len(tele) >= spooled
    stamps = [d["ts"] for d in tele]
    assert stamps == sorted(stamps), "telemetry out of order"
    steps = [p["step"] for d in tele for p in d["points"]]
    assert steps == list(range(steps[0], steps[0] + len(steps))), "a loss point was lost"
    assert link.spool.stats()[0] == 0 and link.spool.peek_state() is None


def test_spool_bound_keeps_the_newest_telemetry(restartable_broker, fleet, link_factory):
    broker = restartable_broker
    config = mqtt_config(
        broker,
        fleet,
        telemetry_interval_s=0.05,
        spool_max_bytes=4096,
        reconnect_min_s=1.0,
        reconnect_max_s=1.0,
        reconnect_jitter=0.1,
    )
    link, _ = link_factory(config)
    t = DeviceTopics.for_device(fleet, "dev1")
    broker.stop()
    deadline = time.monotonic() + 5
    while link.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    for step in range(1, 200):  # far more than 4 KiB of telemetry while offline
        link.record_point(step, 0.5)
        time.sleep(0.01)
    time.sleep(0.2)
    entries, size = link.spool.stats()
    assert size <= 4096 and link.spool.dropped > 0
    broker.start()
    obs = Sub(broker, t.telemetry)
    try:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < entries and time.monotonic() < deadline:
            got += [json.loads(m.payload) for m in obs.drain(0.2)]
    finally:
        obs.close()
    steps = [p["step"] for d in got for p in d["points"]]
    assert steps and steps == sorted(steps)
    assert steps[-1] == 199 or max(steps) >= 190  # the newest survived; the oldest were dropped
    assert min(steps) > 1

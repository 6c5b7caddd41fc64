"""Broker restart while the link runs: reconnect, state then birth, spooled telemetry in order."""

from __future__ import annotations

import json
import threading
import time

import pytest

from agent.core.topics import DeviceTopics
from tests.integration.conftest import Sub, mqtt_config

pytestmark = pytest.mark.broker


class ReconnectHold:
    """Holds the link's return until the observer listens, so the whole publish order after a
    broker restart is seen live, whatever the load (else the link may reconnect, and publish its
    state, birth and backlog, before the observer has subscribed).

    While the broker is down the link's attempts run (and fail) as usual. ``broker_back()``,
    called before the broker starts, makes every later attempt wait for ``observer_ready``;
    the lock guarantees no attempt is half way past that check while the broker starts.
    """

    def __init__(self, link) -> None:
        self.observer_ready = threading.Event()
        self._back = threading.Event()
        self._attempt = threading.Lock()
        self._connect_once = link.transport._connect_once
        link.transport._connect_once = self._held_connect_once

    def _held_connect_once(self) -> bool:
        with self._attempt:
            if not self._back.is_set():
                return self._connect_once()
        assert self.observer_ready.wait(10), "the observer never subscribed"
        return self._connect_once()

    def broker_back(self) -> None:
        with self._attempt:
            self._back.set()


def _wait_for(what: str, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.02)


def _describe(fresh, first_seq) -> str:
    """The deliveries in short, for assertion messages: ``leaf:what:session_seq[:R]``."""
    out = []
    for tp, d, retained in fresh[:40]:
        leaf = tp.rsplit("/", 1)[-1]
        what = d.get("status") or d.get("state") or f"{len(d.get('points', []))}pts@{d['ts']:.2f}"
        out.append(f"{leaf}:{what}:{d.get('session_seq')}{':R' if retained else ''}")
    return f"first_seq={first_seq}: " + " ".join(out)


@pytest.mark.parametrize("telemetry_qos", [0, 1])
def test_broker_restart_republishes_and_drains_spool_in_order(
    restartable_broker, fleet, link_factory, telemetry_qos
):
    broker = restartable_broker
    config = mqtt_config(
        broker,
        fleet,
        telemetry_interval_s=0.1,
        telemetry_qos=telemetry_qos,
        reconnect_min_s=0.3,
        reconnect_max_s=0.3,
        reconnect_jitter=0.1,
    )
    link, device = link_factory(config)
    t = DeviceTopics.for_device(fleet, "dev1")
    first_seq = link.session_seq
    hold = ReconnectHold(link)

    stop = threading.Event()

    def feed() -> None:  # the daemon's loss curve, one point every 20 ms
        step = 0
        while not stop.wait(0.02):
            step += 1
            link.record_point(step, 1.0 / step)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)  # live telemetry flows
        broker.stop()
        _wait_for("link offline", lambda: not link.connected)
        device.state = "paused"  # a state change while offline goes to the spool
        _wait_for(
            "a backlog, the paused state spooled and a failed reconnect",
            lambda: (
                link.spool.stats()[0] >= 5
                and link.spool.peek_state() is not None
                and link.session_seq > first_seq
            ),
        )
        # The backlog's head: the first telemetry the new session must publish after its state
        # and birth. Anything older arriving earlier is paho re-sending what the old connection
        # never saw acknowledged (at least once), not the backlog.
        backlog_head_ts = json.loads(link.spool.peek(1)[0].payload)["ts"]
        spooled, _ = link.spool.stats()
        hold.broker_back()
        broker.start()
        obs = Sub(broker, t.available, t.state, t.telemetry)
        hold.observer_ready.set()
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
        hold.observer_ready.set()
        stop.set()
        feeder.join()

    # Retained copies come at subscription, before anything the link publishes; the old
    # session's availability among them (its will) is not news.
    fresh = [
        (m.topic, json.loads(m.payload), bool(m.retain))
        for m in msgs
        if not m.retain
        or m.topic != t.available
        or json.loads(m.payload)["session_seq"] > first_seq
    ]
    seen = _describe(fresh, first_seq)
    live = [(tp, d) for tp, d, retained in fresh if not retained]

    def first(match) -> int:
        i = next((i for i, (tp, d) in enumerate(live) if match(tp, d)), None)
        assert i is not None, seen
        return i

    # The observer listened before the link returned, so every publish is seen live, in order:
    # the new session's state, then its birth, then the backlog (possibly preceded by older
    # telemetry re-sent from the old connection).
    i_state = first(lambda tp, d: tp == t.state and d["state"] == "paused")
    i_birth = first(
        lambda tp, d: tp == t.available and d["status"] == "online" and d["session_seq"] > first_seq
    )
    i_backlog = first(lambda tp, d: tp == t.telemetry and d["ts"] >= backlog_head_ts)
    assert i_state < i_birth < i_backlog, seen
    assert live[i_state][1]["session_seq"] == live[i_birth][1]["session_seq"], seen
    # A dead session never comes back "online" (the link must not answer its own will).
    assert not [
        d
        for tp, d in live
        if tp == t.available and d["status"] == "online" and d["session_seq"] <= first_seq
    ], seen
    tele = [d for tp, d in live if tp == t.telemetry]
    assert len([d for d in tele if d["ts"] >= backlog_head_ts]) >= spooled, seen
    stamps = [d["ts"] for d in tele]
    assert stamps == sorted(stamps), f"telemetry out of order: {seen}"
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
        reconnect_min_s=0.3,
        reconnect_max_s=0.3,
        reconnect_jitter=0.1,
    )
    link, _ = link_factory(config)
    hold = ReconnectHold(link)
    t = DeviceTopics.for_device(fleet, "dev1")

    def spooled_steps() -> list[int]:
        return [p["step"] for e in link.spool.peek(10_000) for p in json.loads(e.payload)["points"]]

    try:
        broker.stop()
        _wait_for("link offline", lambda: not link.connected)
        for step in range(1, 200):  # far more than 4 KiB of telemetry while offline
            link.record_point(step, 0.5)
            time.sleep(0.01)
        _wait_for("the last point spooled", lambda: 199 in spooled_steps())
        entries, size = link.spool.stats()
        assert size <= 4096 and link.spool.dropped > 0
        hold.broker_back()
        broker.start()
        obs = Sub(broker, t.telemetry)
        hold.observer_ready.set()
        try:
            got: list[dict] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                p["step"] == 199 for d in got for p in d["points"]
            ):
                got += [json.loads(m.payload) for m in obs.drain(0.2)]
        finally:
            obs.close()
    finally:
        hold.observer_ready.set()
    steps = [p["step"] for d in got for p in d["points"]]
    assert steps and steps == sorted(steps)
    assert steps[-1] == 199  # the newest survived; the oldest were dropped
    assert min(steps) > 1
    assert len(got) >= entries

"""Fixtures for the fleet-link tests: a real mosquitto per session, per-test fleets, agents.

The broker is always the real one (house style); only the daemon behind the link is simulated
(:class:`agent.controller.simulator.SimDevice`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.mqtt import MqttConfig
from agent.controller.simulator import SimDevice
from agent.io.disk import DiskFaults
from agent.io.mqtt import disable_nagle
from agent.services.fleet.link import FleetLink
from tests.fleet_broker import LocalBroker, TlsFiles, make_certs, mosquitto_path

REPO = Path(__file__).resolve().parents[2]

needs_mosquitto = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")

# Fast timings for tests; production defaults are in MqttConfig.
FAST: dict[str, Any] = {
    "reconnect_min_s": 0.1,
    "reconnect_max_s": 0.5,
    "reconnect_jitter": 0.2,
    "state_poll_s": 0.1,
    "telemetry_interval_s": 3600.0,
    "keepalive_s": 5,
}


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = LocalBroker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[LocalBroker]:
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = LocalBroker(tmp_path_factory.mktemp("mosquitto-tls"), tls=tls_files)
    b.start()
    yield b
    b.stop()


@pytest.fixture()
def restartable_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own, so restarting it disturbs no other test."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = LocalBroker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture()
def fleet() -> str:
    """A fleet name of this test's own: every test has its own topic prefix."""
    return f"t{uuid.uuid4().hex[:10]}"


def mqtt_config(broker: LocalBroker, fleet: str, **overrides: Any) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "fleet": fleet,
            **FAST,
            **overrides,
        }
    )


class Sub:
    """A plain paho MQTT 5 client collecting messages for assertions."""

    def __init__(self, broker: LocalBroker, *filters: str, protocol: int = paho.MQTTv5) -> None:
        self.q: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}", protocol=protocol
        )
        ready = threading.Event()
        self.client.on_socket_open = disable_nagle
        self.client.on_message = lambda c, u, m: self.q.put(m)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if filters:
            self.client.subscribe([(f, 1) for f in filters])
            assert ready.wait(5), "no SUBACK"

    def wait(
        self, pred: Callable[[paho.MQTTMessage], bool], timeout: float = 5.0
    ) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.q.get(timeout=left)
            except queue.Empty:
                break
            seen.append(msg.topic)
            if pred(msg):
                return msg
        raise AssertionError(f"no matching message within {timeout} s; saw {seen[-10:]}")

    def wait_json(
        self,
        topic: str,
        pred: Callable[[dict[str, Any]], bool] = lambda d: True,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        def ok(m: paho.MQTTMessage) -> bool:
            if m.topic != topic or not m.payload:
                return False
            try:
                return bool(pred(json.loads(m.payload)))
            except ValueError:
                return False

        return json.loads(self.wait(ok, timeout).payload)

    def drain(self, within: float = 0.3) -> list[paho.MQTTMessage]:
        out = []
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.q.get(timeout=left))
            except queue.Empty:
                break
        return out

    def publish(self, topic: str, payload: bytes | str, **kw: Any) -> None:
        self.client.publish(topic, payload, qos=kw.pop("qos", 1), **kw).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def sub_factory(broker: LocalBroker) -> Iterator[Callable[..., Sub]]:
    subs: list[Sub] = []

    def make(*filters: str, on: LocalBroker | None = None, **kw: Any) -> Sub:
        s = Sub(on or broker, *filters, **kw)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


def wait_online(
    config: MqttConfig, device_id: str, timeout: float = 10.0, min_seq: int = 0
) -> dict[str, Any]:
    """Wait for the device's birth. Its subscriptions were sent before the birth on the same
    connection, so once the birth is seen, commands published now reach the device."""
    from agent.core.topics import DeviceTopics

    topic = DeviceTopics.for_device(config.fleet, device_id).available
    broker = LocalBroker.__new__(LocalBroker)
    broker.host, broker.port = config.host, config.port
    sub = Sub(broker, topic)
    try:
        return sub.wait_json(
            topic, lambda d: d["status"] == "online" and d["session_seq"] > min_seq, timeout
        )
    finally:
        sub.close()


@pytest.fixture()
def link_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[FleetLink, SimDevice]]]:
    """In-process links (real transport, real broker) over simulated daemons, started and
    online (birth seen) unless ``start=False``."""
    links: list[FleetLink] = []

    def make(
        config: MqttConfig,
        device_id: str = "dev1",
        *,
        state_dir: Path | None = None,
        step_s: float = 0.01,
        start: bool = True,
        device_cls: type[SimDevice] = SimDevice,
        faults: DiskFaults | None = None,
    ) -> tuple[FleetLink, SimDevice]:
        sd = state_dir or tmp_path / device_id
        sd.mkdir(parents=True, exist_ok=True)
        device = device_cls(sd, step_s=step_s)
        link = FleetLink(
            config,
            device_id=device_id,
            state_dir=sd,
            handler=device,
            state_source=device,
            config_sink=device,
            faults=faults,
        )
        if start:
            before = int(link.store.get("session_seq") or 0)
            link.start()
            links.append(link)
            wait_online(config, device_id, min_seq=before)
        return link, device

    yield make
    for link in links:
        with contextlib.suppress(Exception):  # some tests stop their link themselves
            link.stop(timeout=2)


class AgentProcess:
    """The simulator as a separate process (so it can be killed with SIGKILL)."""

    def __init__(self, config: MqttConfig, device_id: str, state_dir: Path) -> None:
        fields = config.model_dump(mode="json", exclude={"enabled"})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.controller.simulator",
                "--device",
                device_id,
                "--state-dir",
                str(state_dir),
                "--mqtt-json",
                json.dumps(fields),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture()
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def make(
        config: MqttConfig, device_id: str = "dev1", state_dir: Path | None = None
    ) -> AgentProcess:
        sd = state_dir or tmp_path / f"proc-{device_id}"
        sd.mkdir(parents=True, exist_ok=True)
        p = AgentProcess(config, device_id, sd)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.close()


__all__ = ["Sub", "mqtt_config", "needs_mosquitto", "signal", "wait_online"]

"""The controller's MQTT client: retained-state snapshots and correlated requests.

Short-lived by design (one CLI invocation); paho's own network thread is enough here, the
device side is where reconnect policy matters.
"""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.commands import CommandResult
from agent.core.fleet_documents import Availability, StateDocument
from agent.core.topics import FleetTopics
from agent.errors import MobizoError
from agent.io.mqtt import ClientTls, new_client

# mobizo-fleet's exit codes: done, failed (the device said no), bad usage, no answer.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


class FleetError(MobizoError):
    """The controller cannot reach the broker or the device did not answer."""


# Job states after which nothing more happens (agent.core.jobs.TERMINAL, as the wire spells them).
TERMINAL_JOB_STATES = frozenset(
    {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}
)


@dataclass(frozen=True)
class PendingRequest:
    """A command sent and not yet answered: how its reply is recognised."""

    device: str
    name: str
    request_id: str
    reply_topic: str
    correlation: bytes


@dataclass
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    fleet: str = "default"
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool = False
    tls_insecure: bool = False


@dataclass
class DeviceView:
    """What the retained messages say about one device."""

    device_id: str
    available: Availability | None = None
    state: StateDocument | None = None
    reported: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    updated: float = field(default_factory=time.time)

    @property
    def online(self) -> bool:
        """Online per the birth; an ``offline`` will from an older session than the current
        state document is a late death and does not count (Sparkplug bdSeq rule)."""
        if self.available is None:
            return False
        if self.available.status == "online":
            return True
        seq = self.state.session_seq if self.state else None
        return (
            self.available.status == "offline"
            and seq is not None
            and self.available.session_seq < seq
        )


class FleetClient:
    """A connected controller client. Use as a context manager."""

    def __init__(self, opts: BrokerOptions, *, connect_timeout: float = 5.0) -> None:
        self.opts = opts
        self.topics = FleetTopics(opts.fleet)
        self.client_id = f"mobizo-fleet-{uuid.uuid4().hex[:12]}"
        self.v5 = opts.protocol == "5"
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subscribed: dict[int, threading.Event] = {}
        tls = (ClientTls(opts.ca_file, opts.cert_file, opts.key_file, opts.tls_insecure)
               if opts.tls or opts.ca_file else None)
        client = new_client(self.client_id, v5=self.v5, username=opts.username,
                            password=opts.password, tls=tls)
        client.on_connect = self._on_connect
        client.on_message = lambda c, u, msg: self.messages.put(msg)
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._connect_timeout = connect_timeout

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = str(rc)
        else:
            self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        # SUBACK may beat subscribe()'s return: whoever comes first creates the event.
        self._subscribed.setdefault(mid, threading.Event()).set()

    def __enter__(self) -> FleetClient:
        try:
            self._client.connect(self.opts.host, self.opts.port, 30)
        except (OSError, ssl.SSLError) as exc:
            raise FleetError(
                f"cannot reach broker {self.opts.host}:{self.opts.port}: {exc}; check --host/--port"
            ) from exc
        self._client.loop_start()
        deadline = time.monotonic() + self._connect_timeout
        while not self._connected.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self.close()
                raise FleetError(
                    f"broker {self.opts.host}:{self.opts.port} refused or did not answer: "
                    f"{self._refused or 'timeout'}; check credentials and TLS options"
                )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def subscribe(self, *filters: str, timeout: float = 5.0) -> None:
        """Subscribe and wait for the SUBACK (so nothing published afterwards is missed)."""
        rc, mid = self._client.subscribe([(f, 1) for f in filters])
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise FleetError(f"subscribing to {filters} failed: {paho.error_string(rc)}")
        event = self._subscribed.setdefault(mid, threading.Event())
        if not event.wait(timeout):
            raise FleetError(f"subscribing to {filters} failed")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        props: Properties | None = None,
        timeout: float = 5.0,
    ) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(timeout)

    # -- views ------------------------------------------------------------------------------
    def snapshot(self, wait_s: float = 1.0, device: str | None = None) -> dict[str, DeviceView]:
        """Collect retained availability / state / reported config for ``wait_s`` seconds."""
        if device is None:
            filters = [self.topics.all_available, self.topics.all_state, self.topics.all_reported]
        else:
            d = self.topics.device(device)
            filters = [d.available, d.state, d.config_reported]
        self.subscribe(*filters)
        views: dict[str, DeviceView] = {}
        for msg in self.messages_within(wait_s):
            self.absorb(views, msg)
        return views

    def messages_within(self, seconds: float) -> Iterator[paho.MQTTMessage]:
        """The messages that arrive in the next ``seconds`` (the caller may stop early)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                yield self.messages.get(timeout=left)
            except queue.Empty:
                return

    def absorb(self, views: dict[str, DeviceView], msg: paho.MQTTMessage) -> str | None:
        """Fold one message into ``views``; returns the device id it concerned."""
        where = self.topics.split(msg.topic)
        if where is None or not msg.payload:
            return None
        device_id, leaf = where
        view = views.setdefault(device_id, DeviceView(device_id))
        try:
            if leaf == "available":
                view.available = Availability.model_validate_json(msg.payload)
            elif leaf == "state":
                view.state = StateDocument.model_validate_json(msg.payload)
            elif leaf == "config/reported":
                view.reported = json.loads(msg.payload)
            elif leaf == "telemetry":
                view.telemetry = json.loads(msg.payload)
            else:
                return None
        except ValueError:
            return None  # a malformed retained message from someone else: skip it
        view.updated = time.time()
        return device_id

    # -- requests ---------------------------------------------------------------------------
    def request(
        self,
        device: str,
        name: str,
        args: dict[str, Any],
        *,
        timeout: float,
        request_id: str | None = None,
        job_id: str | None = None,
        expires_in: float | None = None,
    ) -> CommandResult:
        """Send a command and wait for its correlated result.

        MQTT 5: response topic + correlation data (and the request id). MQTT 3.1.1: the reply
        comes on ``<prefix>/cmd-result/<request_id>``.
        """
        pending = self.send(device, name, args, request_id=request_id, job_id=job_id,
                            expires_in=expires_in)
        for msg in self.messages_within(timeout):
            result = self.reply_to(pending, msg)
            if result is not None:
                return result
        raise FleetError(
            f"no answer from {device} to {name} within {timeout:.0f} s (device offline, or busy?)"
        )

    def send(
        self,
        device: str,
        name: str,
        args: dict[str, Any],
        *,
        request_id: str | None = None,
        job_id: str | None = None,
        expires_in: float | None = None,
    ) -> PendingRequest:
        """Publish a command (QoS 1) after subscribing to its reply; match replies with
        :meth:`reply_to`. A device with a persistent session that is offline now gets it when
        it reconnects, within its session expiry."""
        dev = self.topics.device(device)
        request_id = request_id or uuid.uuid4().hex
        body: dict[str, Any] = {"request_id": request_id, "args": args}
        if job_id:
            body["job_id"] = job_id
        if expires_in is not None:
            body["expires_at"] = time.time() + expires_in
        correlation = uuid.uuid4().bytes
        props = None
        if self.v5:
            reply_topic = self.topics.controller_reply(self.client_id)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = correlation
            if expires_in is not None:
                props.MessageExpiryInterval = max(1, int(expires_in))
        else:
            reply_topic = dev.cmd_result(request_id)
        self.subscribe(reply_topic)
        self.publish(dev.cmd(name), json.dumps(body).encode(), props=props)
        return PendingRequest(device, name, request_id, reply_topic, correlation)

    def reply_to(self, pending: PendingRequest, msg: paho.MQTTMessage) -> CommandResult | None:
        """The result ``msg`` carries for ``pending``, or None when it is something else."""
        if msg.topic != pending.reply_topic:
            return None
        if self.v5:
            got = getattr(msg.properties, "CorrelationData", None)
            if got is not None and bytes(got) != pending.correlation:
                return None
        try:
            result = CommandResult.model_validate_json(msg.payload)
        except ValueError:
            return None
        if result.request_id not in (pending.request_id, None):
            return None
        if result.device_id != pending.device:
            return None  # one reply topic serves every device of a fleet-wide command
        return result

    def wait_job(self, device: str, job_id: str, *, timeout: float) -> dict[str, Any]:
        """Follow ``jobs/<id>`` until the job is terminal; returns its last view."""
        topic = self.topics.device(device).job(job_id)
        self.subscribe(topic)
        last: dict[str, Any] = {}
        for msg in self.messages_within(timeout):
            if msg.topic != topic or not msg.payload:
                continue
            last = json.loads(msg.payload)
            if last.get("status") in TERMINAL_JOB_STATES:
                return last
        raise FleetError(
            f"job {job_id} on {device} not finished within {timeout:.0f} s "
            f"(last: {last.get('status', 'unknown')})"
        )

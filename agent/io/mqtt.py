"""Thin MQTT transport over paho-mqtt 2.x (CallbackAPIVersion.VERSION2).

What it does and nothing more: one network thread with our own reconnect loop (exponential
backoff with jitter, see :mod:`agent.core.backoff`), TLS and credentials, the Last Will set
freshly before every connect (its payload carries the new session sequence), subscriptions
renewed in on_connect, and every network event turned into an item on a queue. Callbacks never
block and never raise; the fleet link's worker thread does the real work.

"Connected" is set only when the CONNACK reason code is a success (unlike code that trusts
on_connect blindly).

Inbound messages are bounded before they become events (:mod:`agent.io.mqtt_guard`): a payload
over ``max_payload_bytes`` is dropped unread (the event keeps only its size, so the link can
still answer it), each topic is rate-limited, and the events queue may be bounded in bytes.
A password is never sent in clear text to a broker that is not on loopback. The client set-up
helpers live in :mod:`agent.io.mqtt_client` (re-exported here).

With ``session_expiry_s`` > 0 the session is persistent: the broker keeps the subscriptions and
queues QoS 1 messages (commands) while the device is away, and delivers them after the next
CONNACK. MQTT 5 bounds it by the Session Expiry Interval; MQTT 3.1.1 (clean session off) has
no expiry of its own, so the broker's limit applies (mosquitto: ``persistent_client_expiration``,
unlimited by default).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.core.backoff import Backoff
from agent.io.mqtt_client import (
    ClientTls,
    disable_nagle,
    network_thread_writes,
    new_client,
    use_tls,
)
from agent.io.mqtt_guard import TopicRateLimiter, is_loopback_host

__all__ = [
    "ClientTls", "Connected", "Disconnected", "Event", "Inbound", "MqttTransport",
    "SubscribeOptions", "TransportSettings", "Will", "disable_nagle", "new_client", "use_tls",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportSettings:
    host: str
    port: int
    client_id: str
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    reconnect_jitter: float = 0.5
    max_packet_bytes: int | None = None
    connect_timeout_s: float = 5.0
    max_payload_bytes: int | None = None  # larger inbound payloads are dropped unread
    rate_per_s: float | None = None  # per-topic inbound rate limit (None: off)
    rate_burst: int = 100
    # > 0: a persistent session (MQTT 5: clean start off + this Session Expiry Interval;
    # 3.1.1: clean session off, kept until the broker's own limit). 0: clean every connect.
    session_expiry_s: int = 0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Connected:
    """CONNACK with a success reason code arrived (subscriptions are already requested)."""

    session_present: bool
    at: float


@dataclass(frozen=True)
class Disconnected:
    reason: str
    at: float


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None
    expiry_s: int | None  # remaining MQTT 5 message expiry interval, as delivered
    received_at: float  # monotonic
    oversize: int = 0  # the size of a payload dropped unread for its size (payload is b"")


Event = Connected | Disconnected | Inbound


def _properties(packet_type: int) -> Properties:
    """MQTT v5 properties for one packet type (paho's constructor is not annotated)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class MqttTransport:
    """One broker connection with reconnects; events go to ``events``."""

    def __init__(
        self,
        settings: TransportSettings,
        events: queue.Queue[Any],
        *,
        subscriptions: Sequence[tuple[str, int | SubscribeOptions]],
        will: Callable[[], Will] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Build the transport; nothing connects until :meth:`start`.

        Args:
            settings: where and how to connect.
            events: queue receiving :data:`Event` items; when full, messages are dropped (logged).
            subscriptions: ``(filter, qos or MQTT 5 options)`` pairs renewed on every connect.
            will: called before each connect attempt for the Last Will to register.
            backoff: reconnect delays; default from ``settings``.
        """
        self.settings = settings
        self._events = events
        self._subscriptions = list(subscriptions)
        self._will = will
        self._backoff = backoff or Backoff(
            settings.reconnect_min_s, settings.reconnect_max_s, settings.reconnect_jitter
        )
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self.v5 = settings.protocol == "5"
        self.dropped = 0
        self.dropped_oversize = 0
        self.connects = 0
        self.rate = (
            TopicRateLimiter(settings.rate_per_s, settings.rate_burst)
            if settings.rate_per_s
            else None
        )
        self._last_drop_log = 0.0
        self._client = self._build_client()

    # -- construction ---------------------------------------------------------------------
    def _build_client(self) -> paho.Client:
        s = self.settings
        tls = ClientTls(s.ca_file, s.cert_file, s.key_file, s.tls_insecure) if s.tls else None
        client = new_client(s.client_id, v5=self.v5, username=s.username, password=s.password,
                            tls=tls,
                            clean_session=None if self.v5 else s.session_expiry_s == 0,
                            reconnect_on_failure=False)
        client.connect_timeout = s.connect_timeout_s
        client.on_socket_register_write = network_thread_writes
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- paho callbacks (network thread): enqueue only, never raise ------------------------
    def _put(self, event: Event) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            self._log_drop("fleet link inbox full; dropped %s", type(event).__name__)

    def _log_drop(self, fmt: str, *args: object) -> None:
        # A flood must not become a flood of log lines (journal, SD card): one a second.
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            log.warning(fmt + " (%d dropped so far)", *args, self.dropped)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        try:
            if reason_code.is_failure:
                log.warning("broker refused the connection: %s", reason_code)
                return
            # Renew subscriptions before anything else so no command published after our
            # birth can be missed (subscribe only queues a packet: it does not block).
            if self._subscriptions:
                client.subscribe(self._subscribe_list())
            self._connected.set()
            self.connects += 1
            self._put(Connected(bool(getattr(flags, "session_present", False)), time.monotonic()))
        except Exception:  # noqa: BLE001 - a callback must never raise into paho
            log.exception("on_connect failed")

    def _subscribe_list(self) -> list[tuple[str, SubscribeOptions]] | list[tuple[str, int]]:
        # paho takes one kind per call: options (MQTT 5) or plain QoS numbers (3.1.1).
        if self.v5:
            return [(t, o if isinstance(o, SubscribeOptions) else SubscribeOptions(qos=o))
                    for t, o in self._subscriptions]
        return [(t, o if isinstance(o, int) else o.QoS) for t, o in self._subscriptions]

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        try:
            was = self._connected.is_set()
            self._connected.clear()
            if was:
                self._put(Disconnected(str(reason_code), time.monotonic()))
        except Exception:  # noqa: BLE001
            log.exception("on_disconnect failed")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            if self.rate is not None and not self.rate.allow(msg.topic):
                self.dropped += 1
                self._log_drop("inbound rate limit on %s; message dropped", msg.topic)
                return
            size = len(msg.payload)
            limit = self.settings.max_payload_bytes
            oversize = size if limit is not None and size > limit else 0
            if oversize:
                # Dropped unread (never copied, never parsed); the event keeps its size.
                self.dropped_oversize += 1
            props = getattr(msg, "properties", None)
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            self._put(
                Inbound(
                    topic=msg.topic,
                    payload=b"" if oversize else bytes(msg.payload),
                    qos=msg.qos,
                    retain=bool(msg.retain),
                    response_topic=getattr(props, "ResponseTopic", None)
                    if props is not None
                    else None,
                    correlation_data=bytes(corr) if corr is not None else None,
                    expiry_s=getattr(props, "MessageExpiryInterval", None)
                    if props is not None
                    else None,
                    received_at=time.monotonic(),
                    oversize=oversize,
                )
            )
        except Exception:  # noqa: BLE001
            log.exception("on_message failed")

    # -- the network thread ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mqtt-net", daemon=True)
        self._thread.start()

    def _connect_once(self) -> bool:
        s = self.settings
        if s.password is not None and not s.tls and not is_loopback_host(s.host):
            log.error(
                "not connecting to %s:%s: a password over plain TCP to a broker that is not on "
                "loopback would cross the network in clear text; enable TLS", s.host, s.port)
            return False
        if self._will is not None:
            try:
                will = self._will()
            except Exception:  # noqa: BLE001 - connect with the previous will rather than die
                log.exception("preparing the last will failed; connecting with the previous one")
            else:
                self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        props = None
        if self.v5 and (s.max_packet_bytes or s.session_expiry_s):
            props = _properties(PacketTypes.CONNECT)
            if s.max_packet_bytes:
                props.MaximumPacketSize = s.max_packet_bytes
            if s.session_expiry_s:
                # The broker keeps our subscriptions and queues QoS 1 commands this long
                # after the connection drops (MQTT 5 section 3.1.2.11.2).
                props.SessionExpiryInterval = s.session_expiry_s
        try:
            if self.v5:
                self._client.connect(s.host, s.port, s.keepalive_s,
                                     clean_start=s.session_expiry_s == 0, properties=props)
            else:
                self._client.connect(s.host, s.port, s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("cannot reach broker %s:%s: %s", s.host, s.port, exc)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect_and_serve()
            except Exception:  # noqa: BLE001 - the network thread must never die
                log.exception("fleet network thread: unexpected error; reconnecting")
            delay = self._backoff.next_delay()
            log.debug("reconnecting in %.2f s", delay)
            self._stop.wait(delay)

    def _connect_and_serve(self) -> None:
        """One connection: connect, serve it until it drops or stop() is called."""
        if not self._connect_once():
            return
        started = time.monotonic()
        while not self._stop.is_set():
            # publish() from other threads wakes select() through paho's socketpair,
            # so a long timeout costs no latency, only stop() reaction time.
            rc = self._client.loop(timeout=0.5)
            if rc != paho.MQTT_ERR_SUCCESS:
                break
        if self._stop.is_set():
            return
        self._on_disconnect(self._client, None, None, "connection lost", None)
        # A connection that lived a while resets the backoff; one that drops at once
        # (refused, kicked) keeps growing it.
        if time.monotonic() - started > 10.0:
            self._backoff.reset()

    # -- used by the link (any thread) ----------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
    ) -> paho.MQTTMessageInfo | None:
        """Publish if connected; None when offline (the caller spools or drops)."""
        if not self.connected:
            return None
        props = None
        if self.v5 and (correlation_data is not None or expiry_s is not None):
            props = _properties(PacketTypes.PUBLISH)
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if expiry_s is not None:
                props.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        return info

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``final`` (topic, payload; retained QoS 1) if connected, disconnect, join.

        A clean DISCONNECT makes the broker discard the Last Will, so ``final`` is what stays.
        """
        if final is not None and self.connected:
            info = self._client.publish(final[0], final[1], qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self._client.disconnect()
            self._client.loop(timeout=0.1)
        except Exception:  # noqa: BLE001 - already gone is fine on the way out
            pass
        self._connected.clear()

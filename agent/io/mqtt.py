"""Thin MQTT transport over paho-mqtt 2.x (CallbackAPIVersion.VERSION2).

What it does and nothing more: one network thread with our own reconnect loop (exponential
backoff with jitter, see :mod:`agent.core.backoff`), TLS and credentials, the Last Will set
freshly before every connect (its payload carries the new session sequence), subscriptions
renewed in on_connect, and every network event turned into an item on a queue. Callbacks never
block and never raise; the fleet link's worker thread does the real work.

"Connected" is set only when the CONNACK reason code is a success (unlike code that trusts
on_connect blindly).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core.backoff import Backoff

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


Event = Connected | Disconnected | Inbound


def _properties(packet_type: int) -> Properties:
    """MQTT v5 properties for one packet type (paho's constructor is not annotated)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def disable_nagle(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: small request/reply packets would otherwise wait on delayed ACKs
    (~40 ms per hop, measured as a 90 ms round trip through mosquitto)."""
    try:
        raw = getattr(sock, "_sock", sock)  # paho wraps TLS/WebSocket sockets
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ClientTls:
    """TLS files for :func:`new_client` (see :func:`use_tls`)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


def new_client(
    client_id: str,
    *,
    v5: bool,
    username: str | None = None,
    password: str | None = None,
    tls: ClientTls | None = None,
    **options: Any,
) -> paho.Client:
    """A paho client (callback API 2) with protocol, credentials, TLS and TCP_NODELAY set.

    The device's link and the controller's client both start here; each then sets its own
    callbacks.

    Args:
        client_id: the MQTT client id.
        v5: MQTT 5 (else 3.1.1).
        username: broker user, if any (``password`` goes with it).
        password: broker password.
        tls: connect over TLS with these files; None for plain TCP.
        **options: passed on to ``paho.Client`` (``clean_session``, ``reconnect_on_failure``).
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311, **options)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        use_tls(client, ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                insecure=tls.insecure)
    client.on_socket_open = disable_nagle
    return client


def use_tls(
    client: paho.Client,
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    insecure: bool,
) -> None:
    """Make ``client`` connect over TLS and verify the broker's certificate.

    Args:
        client: the paho client, before it connects.
        ca_file: the CA bundle to verify the broker with (None: the system's CAs).
        cert_file: the client certificate to present (mutual TLS), if any.
        key_file: its private key.
        insecure: skip only the hostname check (the chain is still verified).
    """
    client.tls_set(
        ca_certs=str(ca_file) if ca_file else None,
        certfile=str(cert_file) if cert_file else None,
        keyfile=str(key_file) if key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.tls_insecure_set(insecure)


def network_thread_writes(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Registered as paho's ``on_socket_register_write``: nothing to do, and that is the point.

    With no such hook, paho's ``publish()`` writes to the socket at once from the calling thread
    (the link's worker, the job runner) while the network thread reads and writes the same
    socket. An SSL object is not thread-safe: under load the broker saw corrupt TLS records
    ("decryption failed or bad record mac") and dropped the link; plain TCP could interleave
    partial writes. With the hook, ``publish()`` only queues the packet and wakes the network
    thread's ``select()`` (paho's socketpair), which writes it: all socket I/O on one thread.
    """


class MqttTransport:
    """One broker connection with reconnects; events go to ``events``."""

    def __init__(
        self,
        settings: TransportSettings,
        events: queue.Queue[Any],
        *,
        subscriptions: Sequence[tuple[str, int]],
        will: Callable[[], Will] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Build the transport; nothing connects until :meth:`start`.

        Args:
            settings: where and how to connect.
            events: queue receiving :data:`Event` items; when full, messages are dropped (logged).
            subscriptions: ``(filter, qos)`` pairs renewed on every connect.
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
        self.connects = 0
        self._client = self._build_client()

    # -- construction ---------------------------------------------------------------------
    def _build_client(self) -> paho.Client:
        s = self.settings
        tls = ClientTls(s.ca_file, s.cert_file, s.key_file, s.tls_insecure) if s.tls else None
        client = new_client(s.client_id, v5=self.v5, username=s.username, password=s.password,
                            tls=tls, clean_session=None if self.v5 else True,
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
            log.warning("fleet link inbox full; dropped %s", type(event).__name__)

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
                client.subscribe(self._subscriptions)
            self._connected.set()
            self.connects += 1
            self._put(Connected(bool(getattr(flags, "session_present", False)), time.monotonic()))
        except Exception:  # noqa: BLE001 - a callback must never raise into paho
            log.exception("on_connect failed")

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
            props = getattr(msg, "properties", None)
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            self._put(
                Inbound(
                    topic=msg.topic,
                    payload=bytes(msg.payload),
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
        if self._will is not None:
            will = self._will()
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        props = None
        if self.v5 and s.max_packet_bytes:
            props = _properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = s.max_packet_bytes
        try:
            if self.v5:
                self._client.connect(
                    s.host, s.port, s.keepalive_s, clean_start=True, properties=props
                )
            else:
                self._client.connect(s.host, s.port, s.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("cannot reach broker %s:%s: %s", s.host, s.port, exc)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._connect_once():
                started = time.monotonic()
                while not self._stop.is_set():
                    # publish() from other threads wakes select() through paho's socketpair,
                    # so a long timeout costs no latency, only stop() reaction time.
                    rc = self._client.loop(timeout=0.5)
                    if rc != paho.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    break
                self._on_disconnect(self._client, None, None, "connection lost", None)
                # A connection that lived a while resets the backoff; one that drops at once
                # (refused, kicked) keeps growing it.
                if time.monotonic() - started > 10.0:
                    self._backoff.reset()
            delay = self._backoff.next_delay()
            log.debug("reconnecting in %.2f s", delay)
            self._stop.wait(delay)

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

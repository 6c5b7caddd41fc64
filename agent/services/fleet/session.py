"""The fleet link's MQTT session: the transport, the session sequence, will, birth and goodbye.

Every connect attempt is a new session with a new sequence number (the Sparkplug bdSeq,
persisted in ``fleet.db``), carried by the Last Will (``offline``), the birth (``online``)
and the goodbye on a clean stop (``stopped``), all retained on ``<prefix>/available``. A
controller compares sequences to tell a late will of an old session from the current one.

Commands are subscribed with MQTT 5 "retain as published", so a command that was published
retained arrives marked retained even live, and is refused (never run) by the inbound side.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config.mqtt import MqttConfig
from agent.core.fleet_documents import Availability
from agent.core.topics import DeviceTopics
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Inbound, MqttTransport, SubscribeOptions, TransportSettings, Will

log = logging.getLogger(__name__)


def wire_bytes(model: BaseModel) -> bytes:
    """A wire document as published: its JSON, ``None`` fields included."""
    return model.model_dump_json(exclude_none=False).encode()


def transport_settings(
    config: MqttConfig, device_id: str, password: str | None
) -> TransportSettings:
    """The transport's settings from the ``[mqtt]`` section (``password`` overrides its file)."""
    tls = config.tls
    return TransportSettings(
        host=config.host,
        port=config.port,
        client_id=config.resolved_client_id(device_id),
        protocol=config.protocol,
        keepalive_s=config.keepalive_s,
        username=config.username,
        password=password if password is not None else config.read_password(),
        tls=tls.enabled,
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        tls_insecure=tls.insecure_skip_hostname_check,
        reconnect_min_s=config.reconnect_min_s,
        reconnect_max_s=config.reconnect_max_s,
        reconnect_jitter=config.reconnect_jitter,
        max_packet_bytes=config.max_packet_bytes,
        max_payload_bytes=config.command_max_payload_bytes,
        rate_per_s=config.inbound_rate_per_s,
        rate_burst=config.inbound_burst,
        session_expiry_s=config.session_expiry_s,
    )


def subscriptions(
    config: MqttConfig, topics: DeviceTopics
) -> list[tuple[str, int | SubscribeOptions]]:
    """What the device subscribes to: its commands (MQTT 5: retain as published, so a retained
    command is recognisable even when it arrives live), its desired config, its availability."""
    subs: list[tuple[str, int | SubscribeOptions]] = []
    for topic in topics.subscriptions:
        if config.protocol == "5" and topic == topics.cmd_filter:
            subs.append((topic, SubscribeOptions(qos=1, retainAsPublished=True)))
        else:
            subs.append((topic, 1))
    return subs


class FleetSession:
    """The transport plus this device's availability: will, birth, and defending the birth.

    Args:
        config: the ``[mqtt]`` section.
        device_id: this device's id.
        topics: this device's topics.
        store: where the session sequence persists.
        inbox: the link's event queue; the transport's network thread only puts into it.
        clock: wall clock for timestamps.
        password: broker password; default read from ``config.password_file``.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        topics: DeviceTopics,
        store: FleetStore,
        inbox: queue.Queue[Any],
        clock: Callable[[], float],
        password: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.store = store
        self.clock = clock
        self.session_seq = int(store.get("session_seq") or 0)
        self._last_birth_fix = 0.0
        self.transport = MqttTransport(
            transport_settings(config, device_id, password),
            inbox,
            subscriptions=subscriptions(config, topics),
            will=self._next_will,
        )

    def _next_will(self) -> Will:
        # Called by the network thread before every connect attempt: a new session, a new seq.
        try:
            self.session_seq = self.store.next_session_seq()
        except Exception as exc:  # noqa: BLE001 - e.g. fleet.db locked: connect all the same
            # A seq newer than any this process used keeps the will/birth order right; it is
            # not persisted, so a restart may reuse it (the controller then sees the same seq
            # twice, which it treats as the same session: harmless).
            self.session_seq += 1
            log.warning("fleet.db: cannot persist the session sequence (%s); using %d",
                        exc, self.session_seq)
        offline = Availability(
            status="offline", session_seq=self.session_seq, device_id=self.device_id
        )
        return Will(self.topics.available, wire_bytes(offline), qos=1, retain=True)

    def publish_birth(self) -> int | None:
        """Publish ``online`` for the current session; its sequence, or None when offline."""
        seq = self.session_seq
        online = Availability(
            status="online", session_seq=seq, device_id=self.device_id, ts=self.clock()
        )
        info = self.transport.publish(self.topics.available, wire_bytes(online), qos=1, retain=True)
        return seq if info is not None else None

    def on_available(self, msg: Inbound) -> None:
        """A retained will from an older session may land after our birth: re-assert it.

        Only an *older* session is overridden; a newer seq means another process claims this
        device id (a misconfiguration), and fighting it would be a birth storm.
        """
        if not self.transport.connected:
            return
        try:
            seen: Availability | None = Availability.model_validate_json(msg.payload)
        except ValidationError:
            seen = None
        if seen is not None and seen.status == "online" and seen.session_seq == self.session_seq:
            return
        if seen is not None and seen.status == "offline" and seen.session_seq == self.session_seq:
            # Our own will: the broker has declared this connection dead (it is shutting down,
            # or our client id was taken over) and is closing it. A birth now is never
            # acknowledged, and paho replays unacknowledged QoS 1 publishes after the next
            # CONNACK: this session's "online" would come back, retained, after the outage,
            # ahead of the new session's state and birth. The next connection announces itself.
            return
        if seen is not None and seen.session_seq > self.session_seq:
            log.error(
                "another agent publishes as device %s (session %d > ours %d); check device_id",
                self.device_id,
                seen.session_seq,
                self.session_seq,
            )
            return
        if time.monotonic() - self._last_birth_fix < 1.0:
            return
        self._last_birth_fix = time.monotonic()
        log.info("availability overwritten by %s; republishing birth", seen)
        self.publish_birth()

    def close(self, timeout: float) -> None:
        """Publish ``stopped`` (retained) and disconnect cleanly."""
        stopped = Availability(
            status="stopped",
            session_seq=self.session_seq,
            device_id=self.device_id,
            ts=self.clock(),
        )
        self.transport.stop(final=(self.topics.available, wire_bytes(stopped)), timeout=timeout)

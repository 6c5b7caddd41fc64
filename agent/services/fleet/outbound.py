"""What the fleet link publishes on its own: the retained state, telemetry, and the spool drain.

Offline, the latest state and the telemetry backlog wait in the spool (``spool.db``); on
reconnect the state is published first (it supersedes any spooled one), then the backlog in
order. Telemetry goes live only when nothing older waits, so the controller sees it in order.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.core.fleet_documents import (
    TELEMETRY_SCHEMA,
    BoardReadings,
    BoardSource,
    StateDocument,
    StateSource,
    Telemetry,
    TelemetryPoint,
)
from agent.io.spool import Spool
from agent.services.fleet.session import FleetSession, wire_bytes

log = logging.getLogger(__name__)

_DRAIN_BATCH = 200


def process_resources() -> dict[str, float]:
    """CPU seconds and resident memory of this process (from getrusage and /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            out["rss_mb"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    return out


def state_document_json(doc: StateDocument) -> str:
    """Stable JSON of a state document (used by tools and tests)."""
    return json.dumps(doc.model_dump(mode="json"), sort_keys=True)


class FleetOutbound:
    """Publishes the state (on change, and every ``state_interval_s``) and telemetry.

    Args:
        config: the ``[mqtt]`` section.
        session: the session to publish in (transport, topics, session sequence).
        spool: where what cannot be published now waits.
        state_source: the daemon's current state.
        clock: wall clock for timestamps.
        stop: set when the link stops; ends a drain early.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        session: FleetSession,
        spool: Spool,
        state_source: StateSource,
        clock: Callable[[], float],
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.session = session
        self.transport = session.transport
        self.topics = session.topics
        self.spool = spool
        self.state_source = state_source
        self.clock = clock
        self._stop = stop
        self._points: deque[TelemetryPoint] = deque(maxlen=config.telemetry_max_points)
        self._points_lock = threading.Lock()
        self._last_state: dict[str, Any] | None = None
        self._last_state_at = 0.0
        # The session whose state and birth are out (set by the link's worker on connect).
        # The transport reports "connected" at the CONNACK, before the worker has handled it:
        # a telemetry tick in between must not put telemetry, live or spooled, ahead of them.
        self.announced_seq: int | None = None

    def _telemetry_may_go_out(self) -> bool:
        return self.transport.connected and self.announced_seq == self.session.session_seq

    def record_point(self, step: int | None, loss: float | None, **extra: float) -> None:
        """Add a loss-curve point to the next telemetry message (any thread)."""
        with self._points_lock:
            self._points.append(TelemetryPoint(ts=self.clock(), step=step, loss=loss, extra=extra))

    def publish_state(self, *, force: bool) -> None:
        """Publish the state if it changed, is due, or ``force``; spool it if offline."""
        try:
            doc = self.state_source.current_state()
        except Exception:  # noqa: BLE001 - a broken source must not stop the link
            log.exception("state source failed")
            return
        content = doc.model_dump(mode="json", exclude={"ts", "session_seq"})
        due = time.monotonic() - self._last_state_at >= self.config.state_interval_s
        if not (force or due or content != self._last_state):
            return
        doc = doc.model_copy(update={"ts": self.clock(), "session_seq": self.session.session_seq})
        payload = wire_bytes(doc)
        if self.transport.publish(self.topics.state, payload, qos=self.config.qos, retain=True):
            peek = self.spool.peek_state()
            if peek is not None:
                self.spool.clear_state(peek.ts)
        else:
            self.spool.put_state(self.topics.state, payload)
        self._last_state = content
        self._last_state_at = time.monotonic()

    def publish_telemetry(self) -> None:
        """Publish the points gathered since the last message, with this process's resources."""
        with self._points_lock:
            points = list(self._points)
            self._points.clear()
        message = Telemetry(
            schema_version=TELEMETRY_SCHEMA,
            ts=self.clock(),
            session_seq=self.session.session_seq,
            points=points,
            resources=process_resources(),
            board=self._board(),
        )
        payload = wire_bytes(message)
        # Live only when nothing older waits in the spool, so order is kept.
        if (
            self._telemetry_may_go_out()
            and self.spool.stats()[0] == 0
            and self.transport.publish(
                self.topics.telemetry, payload, qos=self.config.telemetry_qos
            )
        ):
            return
        self.spool.append(self.topics.telemetry, payload)
        self.drain_spool()

    def _board(self) -> BoardReadings | None:
        """The board's numeric readings, when the state source reads the board (the daemon)."""
        if not isinstance(self.state_source, BoardSource):
            return None
        try:
            return self.state_source.board_readings()
        except Exception:  # noqa: BLE001 - a broken source must not stop the telemetry
            log.exception("board readings failed")
            return None

    def drain_spool(self) -> None:
        """Publish spooled telemetry in order; delete rows once handed over.

        The backlog goes at the live telemetry's QoS: MQTT orders messages on a topic only
        within one QoS level, and a broker may let QoS 0 overtake queued QoS 1 messages.
        "Handed over" is the PUBACK at QoS 1, the socket write at QoS 0 (a connection that
        dies right then loses those few; rows not yet written stay for the next connect).
        """
        while self._telemetry_may_go_out() and not self._stop.is_set():
            batch = self.spool.peek(_DRAIN_BATCH)
            if not batch:
                return
            infos = []
            for entry in batch:
                info = self.transport.publish(
                    entry.topic, entry.payload, qos=self.config.telemetry_qos
                )
                if info is None:
                    break
                infos.append((entry.id, info))
            acked = None
            for entry_id, info in infos:
                deadline = time.monotonic() + 10.0
                while not info.is_published() and time.monotonic() < deadline:
                    if not self.transport.connected:
                        break
                    time.sleep(0.005)
                if not info.is_published():
                    break
                acked = entry_id
            if acked is not None:
                self.spool.ack(acked)
            if acked is None or len(infos) < len(batch) or acked != batch[-1].id:
                return

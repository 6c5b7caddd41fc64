"""The fleet link: the agent's side of the MQTT conversation with the fleet controller.

Wires the pure parts (:mod:`agent.core.topics`, :mod:`agent.core.commands`,
:mod:`agent.core.jobs`) to the adapters (:mod:`agent.io.mqtt`, :mod:`agent.io.spool`,
:mod:`agent.io.fleet_store`) and to the daemon through three small protocols
(:class:`CommandHandler`, :class:`StateSource`, :class:`DesiredConfigSink`). The work is
done by four parts, each in its own module:

- :mod:`agent.services.fleet.session`: the transport, session sequence, will and birth;
- :mod:`agent.services.fleet.inbound`: commands, desired config, our ``available`` topic;
- :mod:`agent.services.fleet.jobs`: long commands as jobs, and their runner thread;
- :mod:`agent.services.fleet.outbound`: state, telemetry and the spool drain.

Threads: the transport's network thread only enqueues; one worker thread (here) handles every
event and the periodic state / telemetry ticks in order; one job thread runs long commands one
at a time (each in a helper thread so its deadline can be enforced). Nothing here imports torch.

On each connect: subscriptions are renewed (by the transport), then the latest state is
published (retained), then the birth, then spooled telemetry in order. Ahead of all these, paho
re-sends what the previous connection published at QoS 1 and never saw acknowledged (at least
once); it is older, so the retained state and birth that follow supersede it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.core import jobs as jobsm
from agent.core.commands import CommandHandler
from agent.core.fleet_documents import DesiredConfigSink, StateSource
from agent.core.topics import DeviceTopics
from agent.io.disk import DiskFaults
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Connected, Disconnected, Inbound, MqttTransport
from agent.io.mqtt_guard import ByteBoundedQueue
from agent.io.spool import Spool
from agent.services.fleet.ha_discovery import HaDiscovery
from agent.services.fleet.inbound import FleetInbound
from agent.services.fleet.jobs import FleetJobs
from agent.services.fleet.outbound import FleetOutbound
from agent.services.fleet.session import FleetSession

log = logging.getLogger(__name__)


class _Poke:
    """Inbox item asking the worker to check the state now."""


def _payload_bytes(event: Any) -> int:
    return len(event.payload) if isinstance(event, Inbound) else 0


class FleetLink:
    """The MQTT fleet link of one device. ``start()`` then ``stop()``; or use ``with``."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        state_dir: Path,
        handler: CommandHandler,
        state_source: StateSource,
        config_sink: DesiredConfigSink,
        clock: Callable[[], float] = time.time,
        password: str | None = None,
        faults: DiskFaults | None = None,
        device_model: str | None = None,
    ) -> None:
        """Build the link; nothing connects before :meth:`start`.

        Args:
            config: the ``[mqtt]`` section.
            device_id: this device's id (topic segment).
            state_dir: directory for ``fleet.db`` (jobs, session seq) and ``spool.db``.
            handler, state_source, config_sink: the daemon's side.
            clock: wall clock for timestamps, expiries and deadlines.
            password: broker password; default read from ``config.password_file``.
            faults: where the spool's and the fleet store's write failures are shown
                (the daemon's status); None: only logged.
            device_model: the model Home Assistant discovery shows (the bundle's).
        """
        self.config = config
        self.device_id = device_id
        self.topics = DeviceTopics.for_device(config.fleet, device_id)
        self.clock = clock
        self._faults = faults
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = FleetStore(state_dir / "fleet.db")
        self.spool = Spool(state_dir / "spool.db", max_bytes=config.spool_max_bytes,
                           max_age_s=config.spool_max_age_s, clock=clock)
        # Bounded in items and in payload bytes: a flood while the worker is busy costs at
        # most inbox_max_bytes of memory; the rest is dropped by the network thread.
        self._inbox: ByteBoundedQueue = ByteBoundedQueue(
            config.inbox_max, config.inbox_max_bytes, _payload_bytes
        )
        self._stop = threading.Event()
        self._next_state_poll = 0.0
        self._next_telemetry = time.monotonic() + config.telemetry_interval_s
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self.session = FleetSession(config, device_id=device_id, topics=self.topics,
                                    store=self.store, inbox=self._inbox, clock=clock,
                                    password=password)
        self.outbound = FleetOutbound(config, session=self.session, spool=self.spool,
                                      state_source=state_source, clock=clock, stop=self._stop)
        self.jobs = FleetJobs(
            config,
            session=self.session,
            store=self.store,
            handler=handler,
            clock=clock,
            stop=self._stop,
            on_finished=self.state_changed,
        )
        self.inbound = FleetInbound(
            config,
            session=self.session,
            store=self.store,
            handler=handler,
            config_sink=config_sink,
            jobs=self.jobs,
            clock=clock,
            poll_state_now=self._poll_state_now,
        )
        self.ha = HaDiscovery(config.home_assistant, session=self.session, store=self.store,
                              model=device_model, qos=config.qos)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Recover persisted jobs, then start the worker, job and network threads."""
        self.jobs.recover()
        self.inbound.report_boot_problems()
        for target, name in ((self._work, "fleet-worker"), (self.jobs.run_forever, "fleet-jobs")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.transport.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``stopped`` (retained), disconnect cleanly, stop the threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.jobs.wake()
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(_Poke())
        for thread in self._threads:
            thread.join(timeout)
        self.session.close(timeout)
        self.store.close()
        self.spool.close()

    def __enter__(self) -> FleetLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API for the daemon ---------------------------------------------------------------
    def state_changed(self) -> None:
        """Ask for the state to be checked and published now (cheap; any thread)."""
        with contextlib.suppress(queue.Full):  # a full inbox will poll the state soon anyway
            self._inbox.put_nowait(_Poke())

    def record_point(self, step: int | None, loss: float | None, **extra: float) -> None:
        """Add a loss-curve point to the next telemetry message (any thread)."""
        self.outbound.record_point(step, loss, **extra)

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def transport(self) -> MqttTransport:
        return self.session.transport

    @property
    def session_seq(self) -> int:
        """The sequence of the current (or last attempted) session: the bdSeq."""
        return self.session.session_seq

    def publish_job(self, job: jobsm.Job) -> bool:
        """Publish a job update (retained); see :meth:`FleetJobs.publish`."""
        return self.jobs.publish(job)

    # -- worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                # Sleep until the next periodic duty (few wakeups when idle: battery, CPU).
                wait = min(self._next_state_poll, self._next_telemetry) - time.monotonic()
                event = self._inbox.get(timeout=min(1.0, max(0.005, wait)))
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                self._tick()
                self._show_storage_faults()
            except Exception:  # noqa: BLE001 - the link must keep serving whatever happens
                log.exception("fleet link worker: unexpected error (continuing)")

    def _handle(self, event: Any) -> None:
        if isinstance(event, Inbound):
            self.inbound.on_message(event)
        elif isinstance(event, Connected):
            self._on_connected(event.session_present)
        elif isinstance(event, Disconnected):
            log.info("fleet broker connection lost: %s", event.reason)
        elif isinstance(event, _Poke):
            self._poll_state_now()

    def _poll_state_now(self) -> None:
        # Worker thread only: the tick that follows this event checks the state.
        self._next_state_poll = 0.0

    def _on_connected(self, session_present: bool = False) -> None:
        # session_present: the broker kept our persistent session (commands queued while we
        # were away arrive next, QoS 1); else it starts a new one.
        log.info("connected to fleet broker (session %d, broker session %s)", self.session_seq,
                 "resumed" if session_present else "new")
        seq = self.session.session_seq
        self.outbound.publish_state(force=True)  # the latest state first (supersedes spooled)
        if self.session.publish_birth() == seq:  # else the connection changed meanwhile
            self.outbound.announced_seq = seq  # state and birth are out: telemetry may follow
        self.inbound.republish_reported_config()
        self.ha.announce()  # Home Assistant discovery: announce, or clear when turned off
        self.jobs.publish_stale()
        self.outbound.drain_spool()

    def _show_storage_faults(self) -> None:
        # The spool and the fleet store never raise (a full card must not stop the link);
        # they keep their last failure, which the daemon's status shows until a write works.
        if self._faults is not None:
            self._faults.note("fleet store", self.store.error)
            self._faults.note("spool", self.spool.error)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_state_poll:
            self._next_state_poll = now + self.config.state_poll_s
            self.outbound.publish_state(force=False)
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval_s
            self.outbound.publish_telemetry()

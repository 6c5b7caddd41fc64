"""The daemon's Prometheus metrics: what it did (counters) and what it sees (read at a scrape).

Counters move where things happen: the bursts (:mod:`agent.services.daemon.bursts`) say when
a trainer starts, steps, finishes, is stopped (and why: a policy check's name, ``paused``,
``shutdown``) or fails (one killed at its hard deadline fails); the run lifecycle says what
the eval gate decided.
Everything else is read when Prometheus scrapes, from what the daemon already holds: its
status (state, latest loss), its last sensor snapshot (temperature, battery, charging,
available memory, load: as of the last policy check) and the fleet link (connected, spool).

Each :class:`DaemonMetrics` has its own :class:`~prometheus_client.CollectorRegistry`, never
the process-global one, so two daemons in one test process never collide. It is served by
:class:`~agent.io.metrics_http.MetricsHttpServer` when ``[daemon] metrics_listen`` is set
(see :func:`metrics_server`); the names are in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.policy import DeviceSnapshot
from agent.core.status import AgentState, AgentStatus
from agent.io.metrics_http import PROMETHEUS_TEXT, MetricsHttpServer

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)

#: Why a burst was stopped, besides a policy check's name (``thermal``, ``power``, ...).
STOP_REASONS = ("paused", "shutdown", "policy")


@dataclass(frozen=True)
class FleetReading:
    """The fleet link as a scrape sees it."""

    connected: bool
    spool_entries: int | None  # None: the spool could not be read just now
    spool_bytes: int | None


@dataclass
class DaemonView:
    """Where a scrape reads the daemon's present (each called on the scrape's thread).

    Attributes:
        status: the daemon's current status (replaced whole, safe to read from any thread).
        snapshot: the last sensor snapshot, or None before the first policy check.
        fleet: the fleet link's reading, or None when the link is off.
    """

    status: Callable[[], AgentStatus]
    snapshot: Callable[[], DeviceSnapshot | None]
    fleet: Callable[[], FleetReading | None] = lambda: None


class DaemonMetrics:
    """The daemon's counters and its scrape-time readings, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bursts_started = Counter(
            "mobizo_daemon_bursts_started", "Trainer bursts started", registry=r)
        self.bursts_finished = Counter(
            "mobizo_daemon_bursts_finished",
            "Bursts that ran their steps to the end (their run goes to evaluation)", registry=r)
        self.bursts_stopped = Counter(
            "mobizo_daemon_bursts_stopped",
            "Bursts stopped before their end (resumable), by reason: a policy check's name, "
            "paused or shutdown", ["reason"], registry=r)
        self.bursts_failed = Counter(
            "mobizo_daemon_bursts_failed", "Bursts whose trainer crashed or could not start",
            registry=r)
        self.train_steps = Counter(
            "mobizo_daemon_train_steps", "Zeroth-order training steps done", registry=r)
        self.eval_verdicts = Counter(
            "mobizo_daemon_eval_verdicts",
            "Runs judged by the eval gate, by outcome (published, rejected, failed, ...)",
            ["verdict"], registry=r)
        self._step: int | None = None
        self._stop_reason = "policy"
        self.view: DaemonView | None = None
        r.register(_Readings(self))

    # --- events (the main loop's thread) -------------------------------------------------
    def burst_started(self, step: int) -> None:
        """A trainer started at run step ``step`` (a resumed run continues its count)."""
        self.bursts_started.inc()
        self._step = step
        self._stop_reason = "policy"

    def stepped(self, step: int) -> None:
        """The trainer reported run step ``step``; the steps since the last report count."""
        if self._step is not None and step > self._step:
            self.train_steps.inc(step - self._step)
        self._step = step

    def stopping(self, reason: str) -> None:
        """The burst is being stopped for ``reason`` (see :func:`stop_reason`)."""
        self._stop_reason = reason

    def burst_ended(self, how: str) -> None:
        """The trainer exited: ``finished``, ``stopped`` or ``failed``."""
        if how == "finished":
            self.bursts_finished.inc()
        elif how == "stopped":
            self.bursts_stopped.labels(self._stop_reason).inc()
        else:
            self.bursts_failed.inc()
        self._step = None

    def verdict(self, outcome: str) -> None:
        """The eval gate's decision on a run (``published``, ``rejected``, ...)."""
        self.eval_verdicts.labels(outcome).inc()

    # --- exposition ----------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its Content-Type."""
        return generate_latest(self.registry), PROMETHEUS_TEXT


def stop_reason(paused: str | None, blocked_by: tuple[str, ...]) -> str:
    """The ``reason`` label of a stopped burst: ``paused``, else the first failed check."""
    if paused is not None:
        return "paused"
    return blocked_by[0] if blocked_by else "policy"


class _Readings(Collector):
    """Gauges read at each scrape from the daemon's :class:`DaemonView`."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        view = self.metrics.view
        if view is None:
            return
        yield from _status_gauges(view.status())
        snap = view.snapshot()
        if snap is not None:
            yield from _board_gauges(snap)
        fleet = view.fleet()
        if fleet is not None:
            yield _gauge("mobizo_daemon_fleet_connected",
                         "1 while the MQTT fleet link is connected", float(fleet.connected))
            if fleet.spool_entries is not None and fleet.spool_bytes is not None:
                yield _gauge("mobizo_daemon_spool_entries",
                             "Telemetry messages waiting in the offline spool",
                             fleet.spool_entries)
                yield _gauge("mobizo_daemon_spool_bytes", "Bytes waiting in the offline spool",
                             fleet.spool_bytes)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _status_gauges(status: AgentStatus) -> Iterator[Metric]:
    state = GaugeMetricFamily("mobizo_daemon_state", "1 for the daemon's current state",
                              labels=["state"])
    for name in get_args(AgentState):
        state.add_metric([name], float(status.state == name))
    yield state
    blocked = GaugeMetricFamily("mobizo_daemon_blocked",
                                "1 for each policy check that keeps training from starting",
                                labels=["check"])
    for check in status.blocked_by:
        blocked.add_metric([check], 1.0)
    yield blocked
    last = status.last_burst
    loss = status.progress.loss if status.progress is not None else None
    if loss is None and last is not None:
        loss = last.train_loss_end
    if loss is not None and math.isfinite(loss):
        yield _gauge("mobizo_daemon_train_loss", "Latest mean training loss", loss)
    if last is not None:
        held = GaugeMetricFamily("mobizo_daemon_eval_heldout_loss",
                                 "Held-out loss of the last evaluated candidate and of the "
                                 "adapter it was compared with", labels=["adapter"])
        for label, value in (("candidate", last.heldout_loss_candidate),
                             ("active", last.heldout_loss_active)):
            if value is not None and math.isfinite(value):
                held.add_metric([label], value)
        yield held


def _board_gauges(snap: DeviceSnapshot) -> Iterator[Metric]:
    if snap.max_temp_c is not None:
        yield _gauge("mobizo_daemon_temperature_celsius",
                     "Hottest watched thermal zone at the last policy check", snap.max_temp_c)
    power = snap.power
    if power.battery_pct is not None:
        yield _gauge("mobizo_daemon_battery_ratio", "Battery charge, 0 to 1",
                     power.battery_pct / 100.0)
    yield _gauge("mobizo_daemon_charging", "1 while a battery charges (or is held full)",
                 float(power.charging))
    yield _gauge("mobizo_daemon_on_mains", "1 while on external power",
                 float(power.source == "mains"))
    if snap.mem_available_mb is not None:
        yield _gauge("mobizo_daemon_memory_available_bytes", "MemAvailable at the last check",
                     snap.mem_available_mb * 2**20)
    if snap.load_1m is not None:
        yield _gauge("mobizo_daemon_load1", "1-minute load average", snap.load_1m)


class _Spool(Protocol):
    def stats(self) -> tuple[int, int]: ...


class FleetLinkLike(Protocol):
    """What a scrape reads of the fleet link (``FleetLink`` is one)."""

    @property
    def connected(self) -> bool: ...

    @property
    def spool(self) -> _Spool: ...


def fleet_reading(link: FleetLinkLike | None) -> FleetReading | None:
    """The link's state for a scrape; None when there is no link (MQTT off, or not started)."""
    if link is None:
        return None
    try:
        entries, size = link.spool.stats()
    except Exception:  # noqa: BLE001 - a spool closing under a scrape: no numbers this time
        return FleetReading(bool(link.connected), None, None)
    return FleetReading(bool(link.connected), entries, size)


def metrics_server(cfg: AgentConfig, metrics: DaemonMetrics) -> MetricsHttpServer | None:
    """The listener ``[daemon] metrics_listen`` asks for (not started), or None when off.

    Over TCP every scrape needs the local API's bearer token (``[inference] token_file``;
    made now if missing, read again at each scrape); the unix socket is token-free.
    """
    listen = cfg.daemon.metrics_listen
    if not listen:
        return None
    state_dir = cfg.paths.state_dir
    if listen == "unix":
        return MetricsHttpServer(metrics.render, unix=state_dir / "metrics.sock")
    if listen.startswith("unix://"):
        return MetricsHttpServer(metrics.render, unix=Path(listen[len("unix://"):]))
    from agent.io.token_file import ensure_token, read_token

    token_path = cfg.inference.token_path(state_dir)
    ensure_token(token_path)  # TokenFileError says what to fix
    host, _, port = listen.rpartition(":")
    return MetricsHttpServer(metrics.render, tcp=(host, int(port)),
                             token=lambda: read_token(token_path))

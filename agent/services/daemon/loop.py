"""The agent daemon's main loop: sensors → policy → training bursts → eval gate → publish.

One thread owns every decision. Each tick it

1. runs the commands queued by the control socket or the fleet link (train-now, pause, ...;
   :mod:`agent.services.daemon.commands`),
2. applies a SIGHUP reload if one was asked for,
3. advances the current run (:mod:`agent.services.daemon.lifecycle`): follows a running burst's
   metrics (and SIGTERMs it when the policy says stop), collects a finished evaluation and
   publishes or rejects its candidate, or — when nothing runs — reads the sensors and asks
   the policy whether to start,
4. writes the status file / STATUS= when the state changed
   (:mod:`agent.services.daemon.status`), and pings the watchdog only when the tick completed
   (so a hung loop stops the pings and systemd restarts us).

This module wires those parts together and holds what they share: the config, the device
ports (swapped by the daemon itself on a reload, from what its ``reconfigure`` factory
returns), the policy's view of the device, and the user's wishes
(:class:`~agent.services.daemon.wishes.UserWishes`).

No torch, no executorch: the trainer and the evaluator are child processes
(:mod:`agent.io.children.process`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.config import AgentConfig, LoadedConfig
from agent.core.policy import Decision, DeviceSnapshot, PolicyState, decide
from agent.core.status import AgentStatus
from agent.errors import AdapterError, MobizoError
from agent.io.disk import DiskFaults, free_bytes, is_disk_fault_at, read_only
from agent.io.systemd import Notifier, WatchdogPinger
from agent.services.daemon.commands import CommandQueue, CommandTable, DaemonHandlers
from agent.services.daemon.debug_hooks import DebugHooks
from agent.services.daemon.federated_round import FederatedRounds
from agent.services.daemon.handover import hand_over
from agent.services.daemon.lifecycle import RunLifecycle
from agent.services.daemon.metrics import DaemonMetrics, DaemonView
from agent.services.daemon.ports import ExampleStore, Registry, Sensors, ServiceLink
from agent.services.daemon.publish import RunOutcome
from agent.services.daemon.run_context import ChildLauncher, RunContext
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.service_residency import ServiceResidency
from agent.services.daemon.status import StatusReporter, heavy_modules_loaded, rss_kb
from agent.services.daemon.wishes import UserWishes

log = logging.getLogger(__name__)

#: A run-file write that failed on a full disk is retried once at least this much is free.
DISK_ROOM_BYTES = 1 << 20


@dataclass(frozen=True)
class Ports:
    """The device ports a config section configures (replaced whole on a reload).

    Attributes:
        sensors: device sensors (a fake sysfs tree in tests).
        service: client of the inference service, or None.
    """

    sensors: Sensors
    service: ServiceLink | None = None


# Given the fresh config and the changed sections, redo what they configure; the new ports.
Reconfigure = Callable[[LoadedConfig, set[str]], Ports]


class Daemon:
    """The main loop. Built by :mod:`agent.app` from real adapters; tests build it the same way.

    Args:
        loaded: the effective config.
        store: the interaction store (open).
        registry: the adapter registry (with a validator for the bundle).
        ports: device sensors and the inference-service client.
        notifier: sd_notify sender.
        tick_s: seconds between main-loop ticks.
        clock: wall-clock seconds (status times, cooldown).
        now: the local time the policy's hours check reads.
        launcher: starts the trainer and evaluator children.
        watchdog_interval: seconds between watchdog pings (None: no watchdog).
        debug: the test-only debug hooks (None: their commands do not exist).
        reload_fn: re-reads the config file: (fresh config, changed sections).
        reconfigure: redoes what changed sections configure; returns the new ports.
        on_state_change: told when the status changed (the fleet link republishes state).
        faults: the disk faults every write path reports (shown in the status).
        status_interval_s: shortest time between status writes that change only the reason
            or the progress (SD-card wear).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        store: ExampleStore,
        registry: Registry,
        ports: Ports,
        notifier: Notifier,
        tick_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        now: Callable[[], datetime] = datetime.now,
        launcher: ChildLauncher | None = None,
        watchdog_interval: float | None = None,
        debug: DebugHooks | None = None,
        reload_fn: Callable[[], tuple[LoadedConfig, set[str]]] | None = None,
        reconfigure: Reconfigure | None = None,
        on_state_change: Callable[[], None] | None = None,
        faults: DiskFaults | None = None,
        status_interval_s: float = 10.0,
    ) -> None:
        self.loaded = loaded
        self.registry = registry
        self.ports = ports
        self.notifier = notifier
        self.tick_s = tick_s
        self.clock = clock
        self.now = now
        self.watchdog = WatchdogPinger(notifier, watchdog_interval)
        self.debug = debug
        self._reload_fn = reload_fn
        self._reconfigure = reconfigure
        state_dir = loaded.config.paths.state_dir
        self.wake = threading.Event()
        self.commands = CommandQueue(self.wake)
        self.reload_requested = threading.Event()
        self.faults = faults if faults is not None else DiskFaults(clock)
        self.reporter = StatusReporter(state_dir, notifier, clock, self.active_version,
                                       on_state_change, faults=self.faults,
                                       min_interval_s=status_interval_s)
        self.wishes = UserWishes()
        self.last_decision: Decision | None = None
        self.last_snapshot: DeviceSnapshot | None = None
        self.ticks = 0
        self.tick_errors = 0
        # Prometheus: counters from the run code, readings from the status and the sensors
        self.metrics = DaemonMetrics()
        self.metrics.view = DaemonView(status=lambda: self.status,
                                       snapshot=lambda: self.last_snapshot)
        self.runs = RunLifecycle(RunContext(
            config=lambda: self.config, store=store, registry=registry,
            files=RunFiles(state_dir, loaded.config.paths.checkpoint_dir), clock=clock,
            launcher=launcher or ChildLauncher(), tell_service=self.tell_service,
            reporter=self.reporter, decide=self.decide, wishes=self.wishes,
            on_state_change=on_state_change or (lambda: None), metrics=self.metrics,
            release_service=self.release_service))
        self.handlers = DaemonHandlers(
            wishes=self.wishes, runs=self.runs, reporter=self.reporter, registry=registry,
            tell_service=self.tell_service, status_document=self.status_document)
        self.federated = FederatedRounds(self.runs)  # rounds asked by the Flower SuperNode
        self.residency = ServiceResidency(
            lambda: self.ports.service,
            lambda: self.config.service.release_program_during_bursts)
        self.runs.recover()

    # ------------------------------------------------------------------ config, status
    @property
    def config(self) -> AgentConfig:
        return self.loaded.config

    @property
    def status(self) -> AgentStatus:
        """The current status, disk faults included (read from any thread: replaced whole,
        never changed in place)."""
        return self.reporter.shown()

    def command_table(self) -> CommandTable:
        """What the control socket accepts: the daemon's commands (+ the debug ones)."""
        table = self.handlers.table() | self.federated.table()
        if self.debug is not None:
            table.update(self.debug.table())
        return table

    def status_document(self) -> dict[str, Any]:
        """The status plus what only the live daemon knows (for the control socket)."""
        runs = self.runs
        manual = self.wishes.manual
        doc = json.loads(self.status.model_dump_json())
        doc["daemon"] = {
            "pid": os.getpid(), "ticks": self.ticks, "rss_kb": rss_kb(),
            "heavy_modules": heavy_modules_loaded(),
            "paused": self.wishes.paused, "manual": sorted(manual.skip) if manual else None,
            "run": runs.run.model_dump() if runs.run else None,
            "trainer_pid": runs.bursts.child.pid if runs.bursts.child else None,
            "eval_pid": runs.evaluation.child.pid if runs.evaluation.child else None,
            "first_step_latency_s": runs.bursts.first_step_latency_s,
            "new_examples": runs.new_examples,
            "config_file": str(self.loaded.file) if self.loaded.file else None,
            "federated": self.federated.status(),
        }
        if self.last_decision is not None:
            doc["daemon"]["checks"] = [
                {"name": c.name, "ok": c.ok, "text": c.text, "skipped": c.skipped}
                for c in self.last_decision.checks]
        return doc

    def active_version(self) -> str:
        """The registry's active version ("initial": the bundle's; "unknown": unreadable)."""
        try:
            return self.registry.active() or "initial"
        except AdapterError as exc:
            log.error("%s", exc)
            return "unknown"

    # ------------------------------------------------------------------ main loop
    def run_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then shut down (burst checkpointed first)."""
        self.reporter.publish(force=True)
        while not stop.is_set():
            healthy = self.tick_once()
            if healthy:
                self.watchdog.tick()
            self.wake.wait(self.tick_s)
            self.wake.clear()
        self.shutdown()

    def tick_once(self) -> bool:
        """One iteration; False when it failed (no watchdog ping then)."""
        try:
            self.commands.run_all()
            if self.debug is not None:
                self.debug.after_commands()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._advance()
            self.ticks += 1
            self.tick_errors = 0
            return True
        except Exception as exc:  # the loop must survive anything one tick does
            if is_disk_fault_at(exc, self.config.paths.state_dir):
                # a full or read-only disk is not a sick loop: report it, keep the watchdog fed
                self._disk_fault(exc)
                return True
            self.tick_errors += 1
            log.exception("main loop tick failed: %s", exc)
            with contextlib.suppress(Exception):  # reporting must not raise again
                self.reporter.set("error", f"internal error: {exc}")
            return self.tick_errors < 3

    def request_reload(self) -> None:
        """Called from the SIGHUP handler: reload at the next tick."""
        self.reload_requested.set()
        self.wake.set()

    def _advance(self) -> None:
        runs = self.runs
        held = self._disk_hold()
        if held is None and runs.check_purges():  # the store may not open on a full card
            self.federated.forget_learning()
        # the burst and its evaluation are over: the user's next request finds a warm engine
        self.residency.restore_if_quiet(busy=runs.bursts.child is not None
                                        or runs.evaluation.child is not None
                                        or self.federated.busy())
        if runs.bursts.child is not None:
            runs.bursts.follow()
        elif runs.evaluation.child is not None:
            runs.follow_eval()
        elif self.federated.busy():
            self.federated.follow()
        elif self.wishes.paused is not None:
            self.reporter.set("paused", self.wishes.paused)
        elif held is not None:
            self.reporter.set("waiting", "waiting: a run file could not be written",
                              blocked_by=("disk",))
        else:
            runs.consider_start()
        self.reporter.publish()

    def _disk_fault(self, exc: BaseException) -> None:
        """A run file could not be written: report it; no new run starts until there is room."""
        path = getattr(exc, "filename", None) or self.config.paths.state_dir
        had = self.faults.get("run")
        message = self.faults.report("run", path, exc)
        if had != message:
            log.error("%s (%s); training holds until there is room", message, exc)
        with contextlib.suppress(Exception):  # reporting must not raise again
            self.reporter.publish()

    def _disk_hold(self) -> str | None:
        """The run-file fault while the disk still has no room; cleared once it has."""
        fault = self.faults.get("run")
        if fault is None:
            return None
        state_dir = self.config.paths.state_dir
        room = free_bytes(state_dir)
        if read_only(state_dir) or (room is not None and room < DISK_ROOM_BYTES):
            return fault
        log.info("the state directory has room again; training may resume")
        self.faults.clear("run")
        return None

    # ------------------------------------------------------------------ policy
    def decide(self, training: bool) -> Decision:
        """Read the sensors and ask the policy whether to train (``training``: a burst runs)."""
        snapshot = self.ports.sensors.snapshot()
        self.last_snapshot = snapshot
        decision = decide(snapshot, self._policy_state(training), self.config.constraints,
                          self.now(), self.wishes.manual)
        prev = self.last_decision
        # Log changes of the verdict, not of every number in it (idle seconds tick up).
        if prev is None or (prev.train, prev.blocked_by) != (decision.train, decision.blocked_by):
            log.info("policy: %s", decision.reason)
        self.last_decision = decision
        return decision

    def _policy_state(self, training: bool) -> PolicyState:
        runs = self.runs
        runs.refresh_new_examples()
        since = runs.bursts.seconds_since_end(runs.memory.last_burst_end)  # monotonic
        if runs.run is not None and not training:
            # A run in progress resumes whatever new data or cooldown say.
            need = self.config.constraints.min_new_examples
            return PolicyState(training=False, new_examples=max(runs.new_examples, need),
                               seconds_since_last_burst=None)
        return PolicyState(training=training, new_examples=runs.new_examples,
                           seconds_since_last_burst=since)

    # ------------------------------------------------------------------ runs, service
    def wait_for_run(self, timeout: float,
                     give_up: Callable[[], bool] | None = None) -> RunOutcome | None:
        """Block until the current/next run ends (for a fleet train-now) or ``give_up()``."""
        return self.runs.wait_for_run(timeout, give_up)

    def tell_service(self, version: str) -> str | None:
        """Ask the service to serve ``version``; its refusal, or None (see hand_over)."""
        service = self.ports.service
        if service is None:
            return None
        return hand_over(service, version, self.config.daemon.publish_verify_s)

    def release_service(self) -> str | None:
        """A burst starts: ask the service to release its program; a note if it did not."""
        return self.residency.release()

    # ------------------------------------------------------------------ reload / stop
    def reload(self) -> bool:
        """SIGHUP: RELOADING=1, re-read the file, apply changed sections, READY=1."""
        self.notifier.reloading()
        ok = False
        try:
            if self._reload_fn is None:
                log.warning("reload asked but no config file to re-read")
            else:
                fresh, changed = self._reload_fn()
                for warning in fresh.warnings:
                    log.warning("%s", warning)
                self.apply_config(fresh, changed)
                ok = True
        except MobizoError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
        finally:
            self.notifier.ready(self.status.headline())
        return ok

    def apply_config(self, fresh: LoadedConfig, changed: set[str]) -> None:
        """Switch to ``fresh`` (main loop only); ``changed`` names the sections that differ."""
        if "paths" in changed:
            log.warning("[paths] changed: the state directory moves only on restart")
        self.loaded = fresh
        if changed:
            log.info("config reloaded; changed sections: %s", ", ".join(sorted(changed)))
        else:
            log.info("config reloaded; nothing changed")
        # new [data] or [constraints]: count the new examples and retry short data afresh
        self.runs.seen_change_seq = None
        self.runs.data_short_at = None
        if self._reconfigure is not None:
            self.ports = self._reconfigure(fresh, changed)

    def shutdown(self) -> None:
        """STOPPING=1; a running burst checkpoints first (bounded), an evaluation is killed."""
        self.notifier.stopping()
        self.runs.stop()
        self.federated.stop()
        self.reporter.set("idle", "stopped")
        self.reporter.publish(force=True)

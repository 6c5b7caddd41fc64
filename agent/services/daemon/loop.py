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
adapters, the policy's view of the device, and the user's pause / train-now wishes.

No torch, no executorch: the trainer and the evaluator are child processes
(:mod:`agent.io.children.process`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.config import AgentConfig, LoadedConfig
from agent.core.policy import Decision, DeviceSnapshot, PolicyState, TrainNow, decide
from agent.core.status import AgentStatus
from agent.errors import AdapterError, MobizoError
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.io.systemd import Notifier, WatchdogPinger
from agent.services.daemon.commands import Command, CommandQueue, handle_command
from agent.services.daemon.handover import hand_over
from agent.services.daemon.lifecycle import RunLifecycle
from agent.services.daemon.publish import RunOutcome
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.status import StatusReporter, heavy_modules_loaded, rss_kb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonTimings:
    """How often and how long; arguments, not constants, so tests can run fast.

    Attributes:
        tick_s: seconds between main-loop ticks.
        stop_grace_s: how long a SIGTERMed burst may take to checkpoint before SIGKILL.
        eval_timeout_s: longest an evaluation child may run.
        publish_verify_s: how long the inference service has to show a published version.
        failure_backoff_s: wait after a failed burst before the next (doubles per failure).
        failure_backoff_max_s: the longest such wait.
    """

    tick_s: float = 2.0
    stop_grace_s: float = 30.0
    eval_timeout_s: float = 900.0
    publish_verify_s: float = 10.0
    failure_backoff_s: float = 30.0
    failure_backoff_max_s: float = 900.0


Sensors = Any  # agent.io.sysfs.SysfsSensors (anything with .snapshot() -> DeviceSnapshot)
ServiceLink = Any  # agent.io.http.Client-like: reload_adapter(), health()


class Daemon:
    """The main loop. Built by :mod:`agent.app` from real adapters; tests build it the same way.

    Args:
        loaded: the effective config.
        store: the interaction store (open).
        registry: the adapter registry (with a validator for the bundle).
        sensors: device sensors (a fake sysfs tree in tests).
        notifier: sd_notify sender.
        service: client of the inference service, or None.
        timings: tick and timeout lengths.
        clock: wall-clock seconds (status times, cooldown).
        python: interpreter for the children.
        systemd_run: a usable systemd-run for the children's scopes, or None (plain fork).
        watchdog_interval: seconds between watchdog pings (None: no watchdog).
        debug_hooks: allow debug commands (``debug-hang``) on the control socket.
        reload_fn: re-reads the config file: (fresh config, changed sections).
        on_reload: redoes what changed sections configure (sensors, service, fleet link).
        on_state_change: told when the status changed (the fleet link republishes state).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        store: InteractionStore,
        registry: AdapterRegistry,
        sensors: Sensors,
        notifier: Notifier,
        service: ServiceLink | None = None,
        timings: DaemonTimings | None = None,
        clock: Callable[[], float] = time.time,
        python: str = sys.executable,
        systemd_run: str | None = None,
        watchdog_interval: float | None = None,
        debug_hooks: bool = False,
        reload_fn: Callable[[], tuple[LoadedConfig, set[str]]] | None = None,
        on_reload: Callable[[LoadedConfig, set[str]], None] | None = None,
        on_state_change: Callable[[], None] | None = None,
    ) -> None:
        self.loaded = loaded
        self.store = store
        self.registry = registry
        self.sensors = sensors
        self.notifier = notifier
        self.service = service
        self.timings = timings or DaemonTimings()
        self.clock = clock
        self.python = python
        self.systemd_run = systemd_run
        self.watchdog = WatchdogPinger(notifier, watchdog_interval)
        self.debug_hooks = debug_hooks
        self._reload_fn = reload_fn
        self._on_reload = on_reload
        self.on_state_change = on_state_change
        self.state_dir = loaded.config.paths.state_dir
        self.files = RunFiles(self.state_dir, loaded.config.paths.checkpoint_dir)
        self.wake = threading.Event()
        self.commands = CommandQueue(self.wake)
        self.reload_requested = threading.Event()
        self.reporter = StatusReporter(self.state_dir, notifier, clock, self.active_version,
                                       on_state_change)
        # What the user asked for: a pause (its reason), or a run now despite the policy.
        self.paused: str | None = None
        self.manual: TrainNow | None = None
        self.last_decision: Decision | None = None
        self.last_snapshot: DeviceSnapshot | None = None
        self.ticks = 0
        self.tick_errors = 0
        # debug hooks (--debug-hooks): a main-loop hang, a sleep at a publish stage
        self.hang_s = 0.0
        self.publish_delay: tuple[str, float] | None = None
        self.runs = RunLifecycle(self)
        self.runs.recover()

    # ------------------------------------------------------------------ config, status
    @property
    def config(self) -> AgentConfig:
        return self.loaded.config

    @property
    def status(self) -> AgentStatus:
        """The current status (read from any thread: replaced whole, never changed in place)."""
        return self.reporter.status

    def status_document(self) -> dict[str, Any]:
        """The status plus what only the live daemon knows (for the control socket)."""
        runs = self.runs
        doc = json.loads(self.status.model_dump_json())
        doc["daemon"] = {
            "pid": os.getpid(), "ticks": self.ticks, "rss_kb": rss_kb(),
            "heavy_modules": heavy_modules_loaded(),
            "paused": self.paused, "manual": sorted(self.manual.skip) if self.manual else None,
            "run": runs.run.model_dump() if runs.run else None,
            "trainer_pid": runs.bursts.child.pid if runs.bursts.child else None,
            "eval_pid": runs.evaluation.child.pid if runs.evaluation.child else None,
            "first_step_latency_s": runs.bursts.first_step_latency_s,
            "new_examples": runs.new_examples,
            "config_file": str(self.loaded.file) if self.loaded.file else None,
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
            self.wake.wait(self.timings.tick_s)
            self.wake.clear()
        self.shutdown()

    def tick_once(self) -> bool:
        """One iteration; False when it failed (no watchdog ping then)."""
        try:
            self.commands.run_all(self._handle)
            if self.hang_s:
                hang, self.hang_s = self.hang_s, 0.0
                log.warning("debug hang: main loop sleeping %.1f s", hang)
                time.sleep(hang)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._advance()
            self.ticks += 1
            self.tick_errors = 0
            return True
        except Exception as exc:  # the loop must survive anything one tick does
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
        if runs.bursts.child is not None:
            runs.bursts.follow()
        elif runs.evaluation.child is not None:
            runs.follow_eval()
        elif self.paused is not None:
            self.reporter.set("paused", self.paused)
        else:
            runs.consider_start()
        self.reporter.publish()

    # ------------------------------------------------------------------ policy
    def decide(self, training: bool) -> Decision:
        """Read the sensors and ask the policy whether to train (``training``: a burst runs)."""
        snapshot = self.sensors.snapshot()
        self.last_snapshot = snapshot
        decision = decide(snapshot, self._policy_state(training), self.config.constraints,
                          datetime.now(), self.manual)
        prev = self.last_decision
        # Log changes of the verdict, not of every number in it (idle seconds tick up).
        if prev is None or (prev.train, prev.blocked_by) != (decision.train, decision.blocked_by):
            log.info("policy: %s", decision.reason)
        self.last_decision = decision
        return decision

    def _policy_state(self, training: bool) -> PolicyState:
        runs = self.runs
        runs.refresh_new_examples()
        since = None
        if runs.memory.last_burst_end is not None:
            since = max(0.0, self.clock() - runs.memory.last_burst_end)
        if runs.run is not None and not training:
            # A run in progress resumes whatever new data or cooldown say.
            need = self.config.constraints.min_new_examples
            return PolicyState(training=False, new_examples=max(runs.new_examples, need),
                               seconds_since_last_burst=None)
        return PolicyState(training=training, new_examples=runs.new_examples,
                           seconds_since_last_burst=since)

    # ------------------------------------------------------------------ commands
    def submit(self, name: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0) -> Command:
        """Queue a command for the main loop and wait for it to be handled."""
        return self.commands.submit(name, args, timeout)

    def wait_for_run(self, timeout: float) -> RunOutcome | None:
        """Block until the current/next run ends (for a fleet train-now)."""
        return self.runs.wait_for_run(timeout)

    def _handle(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return handle_command(self, name, args)

    def tell_service(self, version: str) -> str | None:
        """Ask the service to serve ``version``; its refusal, or None (see hand_over)."""
        if self.service is None:
            return None
        return hand_over(self.service, version, self.timings.publish_verify_s)

    def registry_stage_hook(self, stage: str) -> None:
        """Called by the registry at each publish stage; a debug delay lets tests kill -9
        the daemon mid-publish deterministically."""
        delay = self.publish_delay
        if delay is not None and delay[0] == stage:
            log.warning("debug: publish sleeping %.1f s at stage %s", delay[1], stage)
            time.sleep(delay[1])

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
        """Switch to ``fresh``; ``changed`` names the sections that differ."""
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
        if self._on_reload is not None:
            self._on_reload(fresh, changed)

    def shutdown(self) -> None:
        """STOPPING=1; a running burst checkpoints first (bounded), an evaluation is killed."""
        self.notifier.stopping()
        self.runs.stop()
        self.reporter.set("idle", "stopped")
        self.reporter.publish(force=True)

"""The agent daemon's main loop: sensors → policy → training bursts → eval gate → publish.

One thread owns every decision. Each tick it

1. runs the commands queued by the control socket or the fleet link (train-now, pause, ...),
2. applies a SIGHUP reload if one was asked for,
3. advances the current phase: follows a running burst's metrics (and SIGTERMs it when the
   policy says stop), collects a finished evaluation and publishes or rejects its candidate,
   or — when nothing runs — reads the sensors and asks the policy whether to start,
4. writes the status file / STATUS= when the state changed, and pings the watchdog only when
   the tick completed (so a hung loop stops the pings and systemd restarts us).

A *run* is one candidate adapter: a data snapshot, a seed and an initial adapter, trained in
one or more bursts (a stopped burst resumes from the trainer's checkpoint), then evaluated
against the active adapter and published or rejected. Its state lives in
``<state_dir>/run/run.json`` so a restarted daemon resumes it; a run killed mid-publish is
recognised by its run id in the registry's manifests and not published twice.

No torch, no executorch: the trainer and the evaluator are child processes
(:mod:`agent.services.burst`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent import __version__
from agent.config import AgentConfig, LoadedConfig
from agent.config.atomic import atomic_write_text
from agent.core.backoff import Backoff
from agent.core.eval_gate import GateResult, judge
from agent.core.policy import (
    TRAIN_NOW_DEFAULT_SKIP,
    Decision,
    DeviceSnapshot,
    PolicyState,
    TrainNow,
    decide,
)
from agent.core.status import AgentState, AgentStatus, BurstMetrics, Progress, write_status
from agent.errors import AdapterError, MobizoError
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.io.systemd import Notifier, WatchdogPinger
from agent.services.burst import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ChildJob,
    MetricsTail,
    describe_exit,
    limits_from_training,
)
from agent.services.handover import hand_over
from agent.services.runstate import DaemonMemory, RunState, training_hash
from agent.services.snapshot import remove_snapshot, snapshot_examples

log = logging.getLogger(__name__)

RUN_DIR = "run"
RUN_FILE = "run.json"
MEMORY_FILE = "daemon.json"
CANDIDATES_DIR = "candidates"
HEAVY_MODULES = ("torch", "executorch")
# Consecutive crashes of one run before it is abandoned (its data snapshot and checkpoint go).
MAX_RUN_FAILURES = 3


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


@dataclass
class Command:
    """A request for the main loop; the caller waits on ``done`` for ``result``."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RunOutcome:
    """How a run ended (what a waiting train-now caller receives)."""

    outcome: str
    reason: str
    steps: int = 0
    loss: float | None = None
    adapter_version: str | None = None


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
        debug_hooks: allow debug commands (``debug-hang``) on the control socket.
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
        self.run_dir = self.state_dir / RUN_DIR
        self.checkpoint_dir = loaded.config.paths.checkpoint_dir
        self.candidates_dir = self.state_dir / CANDIDATES_DIR
        self.commands: queue.Queue[Command] = queue.Queue()
        self.wake = threading.Event()
        self.reload_requested = threading.Event()
        self.status = AgentStatus(state="idle", reason="starting", since=clock(),
                                  updated_at=clock(), pid=os.getpid(), version=__version__)
        self._written: tuple[Any, ...] | None = None
        self._headline = ""
        self.paused: str | None = None
        self.manual: TrainNow | None = None
        self.train_child: ChildJob | None = None
        self.eval_child: ChildJob | None = None
        self.eval_started = 0.0
        self.metrics: MetricsTail | None = None
        self.run: RunState | None = None
        self.memory = self._read_memory()
        self.last_decision: Decision | None = None
        self.last_snapshot: DeviceSnapshot | None = None
        self._seen_change_seq: int | None = None
        self._new_examples = 0
        self._data_short_at: int | None = None  # change_seq when data was too short to run
        self._burst_started = 0.0
        self._burst_start_step = 0
        self._burst_losses: list[float] = []
        self._stop_reason = ""
        self._waiters: list[tuple[threading.Event, list[RunOutcome]]] = []
        self.ticks = 0
        self.tick_errors = 0
        self.first_step_latency_s: float | None = None
        self._constraints_hold_at: float | None = None
        self._hang_s = 0.0
        self._publish_delay: tuple[str, float] | None = None
        self._eval_against: tuple[str, str] = ("initial", "")
        # a crashing trainer must not be restarted in a tight loop
        self._backoff = Backoff(self.timings.failure_backoff_s,
                                max(self.timings.failure_backoff_s,
                                    self.timings.failure_backoff_max_s), 0.0)
        self._retry_at: float | None = None
        self._recover_run()

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> AgentConfig:
        return self.loaded.config

    # ------------------------------------------------------------------ main loop
    def run_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then shut down (burst checkpointed first)."""
        self._publish_status(force=True)
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
            self._run_commands()
            if self._hang_s:
                hang, self._hang_s = self._hang_s, 0.0
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
                self._set("error", f"internal error: {exc}")
            return self.tick_errors < 3

    def request_reload(self) -> None:
        """Called from the SIGHUP handler: reload at the next tick."""
        self.reload_requested.set()
        self.wake.set()

    def _advance(self) -> None:
        if self.train_child is not None:
            self._follow_burst()
        elif self.eval_child is not None:
            self._follow_eval()
        elif self.paused is not None:
            self._set("paused", self.paused)
        else:
            self._consider_start()
        self._publish_status()

    # ------------------------------------------------------------------ policy
    def _policy_state(self, training: bool) -> PolicyState:
        self._refresh_new_examples()
        since = None
        if self.memory.last_burst_end is not None:
            since = max(0.0, self.clock() - self.memory.last_burst_end)
        if self.run is not None and not training:
            # A run in progress resumes whatever new data or cooldown say.
            need = self.config.constraints.min_new_examples
            return PolicyState(training=False, new_examples=max(self._new_examples, need),
                               seconds_since_last_burst=None)
        return PolicyState(training=training, new_examples=self._new_examples,
                           seconds_since_last_burst=since)

    def _refresh_new_examples(self) -> None:
        seq = int(self.store.counts()["change_seq"])
        if seq == self._seen_change_seq:
            return
        examples, _ = self.store.examples_since(self.memory.cursor, split="all",
                                                limit=1_000_000)
        self._new_examples = len(examples)
        self._seen_change_seq = seq

    def _decide(self, training: bool) -> Decision:
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

    def _consider_start(self) -> None:
        if self._retry_at is not None:
            left = self._retry_at - time.monotonic()
            if left > 0:
                self._set("waiting", self._retry_reason + f"; next try in {left:.0f} s")
                return
            self._retry_at = None
        decision = self._decide(training=False)
        if not decision.train:
            self._constraints_hold_at = None
            self._set("waiting", decision.reason, blocked_by=decision.blocked_by)
            return
        if self._constraints_hold_at is None:
            self._constraints_hold_at = time.monotonic()
        self._start_run_or_burst(decision)

    # ------------------------------------------------------------------ runs
    def _start_run_or_burst(self, decision: Decision) -> None:
        if self.run is None:
            seq = self._seen_change_seq
            if self._data_short_at is not None and seq == self._data_short_at:
                self._set("waiting", self._data_short_reason, blocked_by=("min_examples",))
                return
            if not self._new_run():
                return
        run = self.run
        assert run is not None
        if run.phase in ("evaluating", "publishing"):
            candidate = self.candidates_dir / run.run_id
            if self._finished_in_registry(run) or not candidate.is_dir():
                self._finish_run(RunOutcome("failed", "candidate lost after a restart")
                                 if not self._finished_in_registry(run)
                                 else RunOutcome("published", "already stored before restart"))
                return
            self._start_eval()
            return
        if not Path(run.init_adapter).is_dir():
            log.warning("run %s: its initial adapter %s is gone; starting afresh", run.run_id,
                        run.init_adapter)
            self._discard_run()
            return
        self._start_burst(decision)

    _data_short_reason = "waiting: not enough data"
    _retry_reason = "waiting: last burst failed"

    def _new_run(self) -> bool:
        cfg = self.config
        run_id = f"run-{self.memory.runs + 1:04d}-{uuid.uuid4().hex[:6]}"
        directory = self.run_dir
        snap = snapshot_examples(self.store, directory, heldout_share=cfg.data.heldout_share,
                                 max_examples=cfg.data.max_examples,
                                 max_heldout=cfg.adapters.eval_max_examples)
        need_held = cfg.data.min_heldout_examples
        if snap.n_train == 0 or snap.n_heldout < need_held:
            remove_snapshot(directory)
            self._data_short_at = self._seen_change_seq
            self._data_short_reason = (
                f"waiting: not enough data ({snap.n_train} training, {snap.n_heldout} held-out "
                f"examples; need >= 1 and >= {need_held})")
            self._set("waiting", self._data_short_reason, blocked_by=("min_examples",))
            return False
        self._data_short_at = None
        active = self.registry.active()
        init_version = active or "initial"
        init_dir = self.registry.path_of(active) if active else self.registry.validator.initial_dir  # type: ignore[union-attr]
        seed = (cfg.training.seed + self.memory.runs * 1_000_003) % (2**63)
        self.run = RunState(
            run_id=run_id, seed=seed, init_adapter=str(init_dir), init_version=init_version,
            cursor=snap.cursor, n_train=snap.n_train, n_heldout=snap.n_heldout,
            created_at=self.clock(), manual=self.manual is not None,
            training_hash=training_hash(cfg.training))
        self.memory = self.memory.model_copy(update={"runs": self.memory.runs + 1})
        self._write_memory()
        # A new run never mixes with an old checkpoint generation.
        self._clear_checkpoints()
        self._write_run()
        log.info("new run %s: %d training / %d held-out examples, from adapter %s",
                 run_id, snap.n_train, snap.n_heldout, init_version,
                 extra={"RUN_ID": run_id, "ADAPTER": init_version})
        return True

    def trainer_argv(self, run: RunState) -> list[str]:
        """The trainer's command line for ``run`` (``python -m agent train ... --resume``)."""
        cfg = self.config
        t = cfg.training
        steps = t.steps_per_burst
        argv = [
            self.python, "-m", "agent", "train",
            "--bundle", str(cfg.bundle_dir),
            "--data", str(self.run_dir / "train.jsonl"),
            "--out", str(self.candidates_dir / run.run_id),
            "--steps", str(steps),
            "--mode", t.mode, "--q", str(t.q), "--batch", str(t.batch),
            "--seed", str(run.seed), "--lr", repr(t.lr), "--eps", repr(t.eps),
            "--lr-schedule", t.lr_schedule,
            "--warmup-steps", str(min(t.warmup_steps, max(0, steps - 1))),
            "--clip", repr(t.clip),
            "--max-seconds", repr(t.max_seconds_per_burst),
            "--checkpoint-dir", str(self.checkpoint_dir),
            "--checkpoint-every", str(t.checkpoint_every),
            "--resume",
            "--init-adapter", run.init_adapter,
            "--backend", t.backend,
            "--heldout-share", "0", "--no-eval", "--progress", "json",
            "--metrics", str(self.run_dir / "metrics.jsonl"),
        ]
        if t.sequence_length:
            argv += ["--max-length", str(t.sequence_length)]
        if cfg.device.threads:
            argv += ["--threads", str(cfg.device.threads)]
        return argv

    def _child(self, name: str, argv: list[str], job_id: str) -> ChildJob:
        t = self.config.training
        return ChildJob(name, argv, self.run_dir / f"{name}.log",
                        limits=limits_from_training(t), systemd_run=self.systemd_run,
                        job_id=job_id, capped=t.memory_max_mb > 0,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def _start_burst(self, decision: Decision) -> None:
        run = self.run
        assert run is not None
        if run.training_hash and run.training_hash != training_hash(self.config.training):
            log.info("run %s: [training] changed since it started; starting a new run",
                     run.run_id)
            self._discard_run()
            return
        run = run.model_copy(update={"attempts": run.attempts + 1, "phase": "training"})
        self.run = run
        self._write_run()
        metrics_path = self.run_dir / "metrics.jsonl"
        self.metrics = MetricsTail(metrics_path, metrics_path.stat().st_size
                                   if metrics_path.exists() else 0)
        child = self._child("train", self.trainer_argv(run), f"{run.run_id}-{run.attempts}")
        try:
            child.start()
        except OSError as exc:
            self._burst_failed(f"could not start the trainer: {exc}", keep_run=False)
            return
        self.train_child = child
        self.run = run = run.model_copy(update={"trainer_pid": child.pid})
        self._write_run()
        self._burst_started = self.clock()
        self._burst_start_step = run.steps_done
        self._burst_losses = []
        self._stop_reason = ""
        total = self.config.training.steps_per_burst
        self._set("training", decision.reason,
                  progress=Progress(step=run.steps_done, total=total, loss=None,
                                    started_at=self._burst_started), blocked_by=())
        log.info("burst %d of run %s started (pid %s, %s)", run.attempts, run.run_id,
                 child.pid, f"resuming at step {run.steps_done}" if run.steps_done else
                 "fresh")

    def _follow_burst(self) -> None:
        child = self.train_child
        run = self.run
        assert child is not None and run is not None
        self._read_metrics()
        code = child.poll()
        if code is not None:
            self._read_metrics()
            self.train_child = None
            self._burst_ended(code, child)
            return
        if child.term_sent_at is None:
            decision = self._decide(training=True)
            if not decision.train or self.paused is not None:
                reason = self.paused or decision.reason
                self._stop_reason = reason
                log.info("stopping the burst: %s", reason)
                child.terminate()
                self._set("training", reason, progress=self.status.progress,
                          blocked_by=decision.blocked_by)
        elif child.overdue(self.timings.stop_grace_s):
            log.warning("trainer did not checkpoint within %.0f s; killing it",
                        self.timings.stop_grace_s)
            child.kill()

    def _read_metrics(self) -> None:
        if self.metrics is None or self.run is None:
            return
        rows = [r for r in self.metrics.read() if "step" in r and "loss" in r]
        if not rows:
            return
        if self.first_step_latency_s is None and self._constraints_hold_at is not None:
            self.first_step_latency_s = time.monotonic() - self._constraints_hold_at
            log.info("first ZO step %.2f s after the constraints held",
                     self.first_step_latency_s)
        last = rows[-1]
        self._burst_losses += [float(r["loss"]) for r in rows if _finite(r.get("loss"))]
        self.run = self.run.model_copy(update={"steps_done": int(last["step"])})
        progress = Progress(step=int(last["step"]), total=self.config.training.steps_per_burst,
                            loss=float(last["loss"]) if _finite(last.get("loss")) else None,
                            started_at=self._burst_started)
        self._set("training", self.status.reason, progress=progress)
        if self.on_state_change:
            self.on_state_change()

    def _burst_ended(self, code: int, child: ChildJob) -> None:
        run = self.run
        assert run is not None
        self.memory = self.memory.model_copy(update={"last_burst_end": self.clock()})
        self._write_memory()
        self._constraints_hold_at = None
        if code == -signal.SIGTERM and child.term_sent_at is not None:
            # stopped before its handler was installed (still importing): nothing was lost
            code = EXIT_INTERRUPTED
        if code in (EXIT_OK, EXIT_INTERRUPTED):
            self._backoff.reset()
        if code == EXIT_OK:
            log.info("burst of run %s finished at step %d; evaluating", run.run_id,
                     run.steps_done)
            self.run = run.model_copy(update={"phase": "evaluating", "failures": 0})
            self._write_run()
            self._start_eval()
            return
        if code == EXIT_INTERRUPTED:
            why = self._stop_reason or "asked to stop"
            total = self.config.training.steps_per_burst
            reason = (f"burst stopped at step {run.steps_done}/{total} ({why}); it resumes "
                      "from its checkpoint")
            self._record_burst("stopped", reason)
            self._write_run()
            self._set("waiting", reason)
            return
        why = describe_exit(code)
        detail = child.last_error_line()
        reason = f"trainer {why}" + (f": {detail}" if detail else "")
        log.error("burst of run %s failed: %s", run.run_id, reason)
        self._burst_failed(reason, keep_run=code != EXIT_BAD_INPUT)

    def _burst_failed(self, reason: str, *, keep_run: bool) -> None:
        run = self.run
        self._record_burst("failed", reason)
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        self._retry_reason = f"waiting: last burst failed ({reason[:200]})"
        if run is not None:
            failures = run.failures + 1
            self.run = run.model_copy(update={"failures": failures})
            if not keep_run or failures >= MAX_RUN_FAILURES:
                log.warning("abandoning run %s after %d failure(s)", run.run_id, failures)
                self._finish_run(RunOutcome("failed", reason, steps=run.steps_done),
                                 record=False, advance_cursor=False)
            else:
                self._write_run()
        self._set("waiting", f"last burst failed ({reason}); "
                  + ("the next one resumes from the last good checkpoint" if keep_run
                     else "the next one starts afresh"))

    def _record_burst(self, outcome: str, reason: str, **extra: Any) -> None:
        run = self.run
        steps = (run.steps_done - self._burst_start_step) if run else 0
        seconds = max(1e-9, self.clock() - self._burst_started) if self._burst_started else None
        metrics = BurstMetrics(
            started_at=self._burst_started or self.clock(), ended_at=self.clock(),
            steps=max(0, steps), outcome=outcome, reason=reason[:500],  # type: ignore[arg-type]
            train_loss_start=self._burst_losses[0] if self._burst_losses else None,
            train_loss_end=self._burst_losses[-1] if self._burst_losses else None,
            steps_per_s=(steps / seconds) if seconds and steps > 0 else None, **extra)
        self.status = self.status.model_copy(update={"last_burst": metrics})

    # ------------------------------------------------------------------ eval + publish
    def _start_eval(self) -> None:
        run = self.run
        assert run is not None
        cfg = self.config
        candidate = self.candidates_dir / run.run_id
        # Compare with what serves NOW (a rollback may have happened while the run trained).
        self._eval_against = self._serving_adapter(run)
        argv = [self.python, "-m", "agent", "eval", str(candidate), self._eval_against[1],
                "--bundle", str(cfg.bundle_dir), "--data", str(self.run_dir / "heldout.jsonl"),
                "--split", "all", "--backend", cfg.training.backend, "--json"]
        if cfg.device.threads:
            argv += ["--threads", str(cfg.device.threads)]
        child = self._child("eval", argv, f"{run.run_id}-eval")
        try:
            child.log_path.unlink(missing_ok=True)
            child.start()
        except OSError as exc:
            self._burst_failed(f"could not start the evaluation: {exc}", keep_run=False)
            return
        self.eval_child = child
        self.eval_started = time.monotonic()
        self._set("evaluating", f"held-out loss of the candidate vs {self._eval_against[0]} on "
                  f"{run.n_heldout} examples")

    def _serving_adapter(self, run: RunState) -> tuple[str, str]:
        """(version, directory) of the adapter serving now; the run's own start if unknown."""
        try:
            active = self.registry.active()
            if active is None:
                return "initial", str(self.registry.validator.initial_dir)  # type: ignore[union-attr]
            return active, str(self.registry.path_of(active))
        except AdapterError as exc:
            log.warning("cannot tell the active adapter (%s); comparing with %s", exc,
                        run.init_version)
            return run.init_version, run.init_adapter

    def _follow_eval(self) -> None:
        child = self.eval_child
        run = self.run
        assert child is not None and run is not None
        code = child.poll()
        if code is None:
            if time.monotonic() - self.eval_started > self.timings.eval_timeout_s:
                log.error("evaluation ran over %.0f s; killing it", self.timings.eval_timeout_s)
                child.stop(5.0)
                code = child.poll()
            if code is None:
                return
        self.eval_child = None
        if code != EXIT_OK:
            detail = child.last_error_line()
            self._finish_run(RunOutcome("failed", f"evaluation {describe_exit(code)}"
                                        + (f": {detail}" if detail else ""),
                                        steps=run.steps_done), advance_cursor=code == 2)
            return
        report = _last_json(child.log_tail(64_000)) or {}
        candidate = self.candidates_dir / run.run_id
        try:
            losses = report["losses"]
            cand = float(losses[str(candidate)])
            active = float(losses[self._eval_against[1]])
            examples = int(report["examples"])
        except (TypeError, KeyError, ValueError) as exc:
            self._finish_run(RunOutcome("failed", f"evaluation output unreadable ({exc})",
                                        steps=run.steps_done))
            return
        cfg = self.config
        gate = judge(cand, active, margin=cfg.adapters.eval_margin,
                     mode=cfg.adapters.eval_margin_mode, examples=examples,
                     min_examples=cfg.data.min_heldout_examples)
        log.info("eval gate for run %s: %s", run.run_id, gate.reason)
        self._publish_or_reject(gate, candidate)

    def _finished_in_registry(self, run: RunState) -> bool:
        try:
            infos = self.registry.list()
        except AdapterError:
            return False
        return any(i.manifest.metrics.get("run_id") == run.run_id for i in infos)

    def _publish_or_reject(self, gate: GateResult, candidate: Path) -> None:
        run = self.run
        assert run is not None
        metrics = {"run_id": run.run_id, "steps": run.steps_done, "n_train": run.n_train,
                   "n_heldout": run.n_heldout, "seed": run.seed,
                   "train_loss_end": self._burst_losses[-1] if self._burst_losses else None}
        parent = run.init_version
        metrics["compared_with"] = self._eval_against[0]
        extra = {"heldout_loss_candidate": _or_none(gate.candidate_loss),
                 "heldout_loss_active": _or_none(gate.active_loss)}
        if not gate.publish:
            version = self.registry.reject(candidate, parent=parent, metrics=metrics,
                                           eval_result=gate.as_dict(), reason=gate.reason)
            self._finish_run(RunOutcome("rejected", gate.reason, steps=run.steps_done,
                                        adapter_version=version), extra=extra)
            return
        self.run = run.model_copy(update={"phase": "publishing"})
        self._write_run()
        self._set("publishing", gate.reason)
        self._publish_status()
        try:
            version = self.registry.publish(candidate, parent=parent, metrics=metrics,
                                            eval_result=gate.as_dict())
        except AdapterError as exc:
            self._finish_run(RunOutcome("failed", f"registry refused the candidate: {exc}",
                                        steps=run.steps_done), extra=extra)
            return
        refused = self._tell_service(version)
        if refused:
            log.error("inference service refused %s (%s); rolling back", version, refused)
            try:
                back = self.registry.rollback()
                self._tell_service(back)
            except AdapterError as exc:
                log.error("rollback failed: %s", exc)
            try:
                self.registry.reject(candidate, parent=parent, metrics=metrics,
                                     eval_result=gate.as_dict(),
                                     reason=f"refused by the inference service: {refused}")
            except AdapterError as exc:
                log.error("could not keep the refused candidate: %s", exc)
            self._finish_run(RunOutcome("rolled_back", f"service refused {version}: {refused}",
                                        steps=run.steps_done, adapter_version=version),
                             extra=extra)
            return
        self._finish_run(RunOutcome("published", gate.reason, steps=run.steps_done,
                                    adapter_version=version), extra=extra)

    def _tell_service(self, version: str) -> str | None:
        """Ask the service to serve ``version``; its refusal, or None (see hand_over)."""
        if self.service is None:
            return None
        return hand_over(self.service, version, self.timings.publish_verify_s)

    def _finish_run(self, outcome: RunOutcome, *, record: bool = True,
                    advance_cursor: bool = True, extra: dict[str, Any] | None = None) -> None:
        """End the current run: record it, clear its checkpoint, data and candidate."""
        run = self.run
        if record:
            self._record_burst(outcome.outcome, outcome.reason,
                               adapter_version=outcome.adapter_version, **(extra or {}))
        log.info("run %s ended: %s (%s)", run.run_id if run else "?", outcome.outcome,
                 outcome.reason, extra={"RUN_ID": run.run_id if run else "",
                                        "OUTCOME": outcome.outcome,
                                        "ADAPTER": outcome.adapter_version or ""})
        if run is not None:
            if advance_cursor:
                self.memory = self.memory.model_copy(update={"cursor": run.cursor})
                self._seen_change_seq = None  # recount new examples
            self.memory = self.memory.model_copy(update={"last_burst_end": self.clock()})
            self._write_memory()
            shutil.rmtree(self.candidates_dir / run.run_id, ignore_errors=True)
        self._discard_run()
        outcome.loss = self._burst_losses[-1] if self._burst_losses else None
        self.manual = None
        for event, box in self._waiters:
            box.append(outcome)
            event.set()
        self._waiters.clear()
        active = self._active_version()
        self.status = self.status.model_copy(update={"active_adapter": active})
        self._set("waiting", f"last run {outcome.outcome}: {outcome.reason}")
        if self.on_state_change:
            self.on_state_change()

    def _discard_run(self) -> None:
        self.run = None
        self._clear_checkpoints()
        remove_snapshot(self.run_dir)
        for name in (RUN_FILE, "metrics.jsonl"):
            (self.run_dir / name).unlink(missing_ok=True)

    def _clear_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    # ------------------------------------------------------------------ persistence
    def _write_run(self) -> None:
        if self.run is not None:
            atomic_write_text(self.run_dir / RUN_FILE, self.run.model_dump_json(indent=2))

    def _read_memory(self) -> DaemonMemory:
        path = self.state_dir / MEMORY_FILE
        try:
            return DaemonMemory.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return DaemonMemory()
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s (%s)", path, exc)
            return DaemonMemory()

    def _write_memory(self) -> None:
        atomic_write_text(self.state_dir / MEMORY_FILE, self.memory.model_dump_json())

    def _recover_run(self) -> None:
        path = self.run_dir / RUN_FILE
        try:
            self.run = RunState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s (%s); starting a new run", path, exc)
            self._discard_run()
            return
        log.info("resuming run %s (phase %s, step %d) left by the previous daemon",
                 self.run.run_id, self.run.phase, self.run.steps_done)
        self._reap_orphan_trainer(self.run.trainer_pid)

    def _reap_orphan_trainer(self, pid: int | None) -> None:
        """Stop a trainer a killed daemon left running: two trainers must never write one
        checkpoint directory. Only a process whose command line names our checkpoint
        directory is touched."""
        if not pid:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return
        if str(self.checkpoint_dir) not in cmdline or " train " not in f" {cmdline} ":
            return
        log.warning("a trainer of the previous daemon still runs (pid %d); stopping it", pid)
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.timings.stop_grace_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _active_version(self) -> str:
        try:
            return self.registry.active() or "initial"
        except AdapterError as exc:
            log.error("%s", exc)
            return "unknown"

    # ------------------------------------------------------------------ status
    def _set(self, state: AgentState, reason: str, **changes: Any) -> None:
        now = self.clock()
        try:
            self.status = self.status.to(state, now, reason, **changes)
        except ValueError:
            # e.g. paused -> training: pass through waiting, which every state may enter
            self.status = self.status.to("waiting", now, reason).to(state, now, reason,
                                                                    **changes)

    def _publish_status(self, force: bool = False) -> None:
        s = self.status
        key = (s.state, s.reason, s.progress, s.last_burst, s.active_adapter, s.blocked_by)
        if force or key != self._written:
            if s.active_adapter is None:
                self.status = s = s.model_copy(update={"active_adapter": self._active_version()})
            write_status(self.state_dir, s.model_copy(update={"updated_at": self.clock()}))
            self._written = key
            if self.on_state_change and not force:
                self.on_state_change()
        headline = s.headline()
        if force or headline != self._headline:
            self.notifier.status(headline)
            self._headline = headline

    def status_document(self) -> dict[str, Any]:
        """The status plus what only the live daemon knows (for the control socket)."""
        doc = json.loads(self.status.model_dump_json())
        doc["daemon"] = {
            "pid": os.getpid(), "ticks": self.ticks, "rss_kb": _rss_kb(),
            "heavy_modules": sorted(m for m in HEAVY_MODULES if m in sys.modules),
            "paused": self.paused, "manual": sorted(self.manual.skip) if self.manual else None,
            "run": self.run.model_dump() if self.run else None,
            "trainer_pid": self.train_child.pid if self.train_child else None,
            "eval_pid": self.eval_child.pid if self.eval_child else None,
            "first_step_latency_s": self.first_step_latency_s,
            "new_examples": self._new_examples,
            "config_file": str(self.loaded.file) if self.loaded.file else None,
        }
        if self.last_decision is not None:
            doc["daemon"]["checks"] = [
                {"name": c.name, "ok": c.ok, "text": c.text, "skipped": c.skipped}
                for c in self.last_decision.checks]
        return doc

    # ------------------------------------------------------------------ commands
    def submit(self, name: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0) -> Command:
        """Queue a command for the main loop and wait for it to be handled."""
        cmd = Command(name, dict(args or {}))
        self.commands.put(cmd)
        self.wake.set()
        if not cmd.done.wait(timeout):
            cmd.error = "the daemon's main loop did not answer in time (busy or hung)"
        return cmd

    def wait_for_run(self, timeout: float) -> RunOutcome | None:
        """Block until the current/next run ends (for a fleet train-now)."""
        event, box = threading.Event(), []  # type: ignore[var-annotated]
        self._waiters.append((event, box))
        event.wait(timeout)
        return box[0] if box else None

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                cmd.result = self._handle(cmd.name, cmd.args)
            except (MobizoError, ValueError) as exc:
                cmd.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - answered, logged, never fatal
                log.exception("command %s failed", cmd.name)
                cmd.error = f"internal error: {exc}"
            finally:
                cmd.done.set()

    def _handle(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "train-now":
            skip = set(args.get("skip") or ()) | TRAIN_NOW_DEFAULT_SKIP
            self.manual = TrainNow(skip=frozenset(skip),
                                   requested_by=str(args.get("requested_by", "cli")))
            self._data_short_at = None
            if self.paused is not None:
                self.paused = None
            return {"message": "training requested; skipping " + ", ".join(sorted(skip))
                    + " (thermal and memory always apply)"}
        if name == "pause":
            reason = str(args.get("reason") or "paused by the user")
            self.paused = reason
            if self.train_child is not None:
                self._stop_reason = reason
                self.train_child.terminate()
            return {"message": f"paused: {reason}"}
        if name == "resume":
            was = self.paused
            self.paused = None
            if self.status.state == "paused":
                self._set("waiting", "resumed")
            return {"message": "resumed" if was else "was not paused"}
        if name == "rollback":
            if self.train_child is not None or self.eval_child is not None:
                pass  # a rollback while training is fine: the run keeps its own init adapter
            version = args.get("version")
            to = self.registry.rollback(str(version) if version is not None else None)
            refused = self._tell_service(to)
            self.status = self.status.model_copy(update={"active_adapter": to})
            return {"active_version": to, "service": refused or "ok"}
        if name == "status":
            return self.status_document()
        if name == "apply-config":  # internal: a validated fleet desired-config
            self.apply_config(args["loaded"], set(args.get("changed") or ()))
            return {"message": "applied"}
        if name == "debug-publish-delay":
            if not self.debug_hooks:
                raise ValueError("debug commands are off (start the daemon with --debug-hooks)")
            self._publish_delay = (str(args.get("stage", "staged")),
                                   float(args.get("seconds", 30.0)))
            return {"message": f"publishing will sleep at {self._publish_delay[0]}"}
        if name == "debug-hang":
            if not self.debug_hooks:
                raise ValueError("debug commands are off (start the daemon with --debug-hooks)")
            self._hang_s = float(args.get("seconds", 5.0))
            return {"message": f"main loop will hang for {self._hang_s} s"}
        raise ValueError(f"unknown command {name!r}")

    def registry_stage_hook(self, stage: str) -> None:
        """Called by the registry at each publish stage; a debug delay lets tests kill -9
        the daemon mid-publish deterministically."""
        delay = self._publish_delay
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
        self._seen_change_seq = None
        self._data_short_at = None
        if self._on_reload is not None:
            self._on_reload(fresh, changed)

    def shutdown(self) -> None:
        """STOPPING=1; a running burst checkpoints first (bounded), an evaluation is killed."""
        self.notifier.stopping()
        if self.train_child is not None:
            log.info("stopping the burst before exit (up to %.0f s)", self.timings.stop_grace_s)
            self._stop_reason = "daemon stopping"
            child = self.train_child
            code = child.stop(self.timings.stop_grace_s)
            self._read_metrics()
            self.train_child = None
            if code is not None:
                if code == EXIT_OK:
                    # finished just now: evaluate after the restart, not during shutdown
                    self.run = self.run.model_copy(update={"phase": "evaluating"})  # type: ignore[union-attr]
                    self._write_run()
                else:
                    self._burst_ended(code, child)
        if self.eval_child is not None:
            self.eval_child.stop(5.0)
            self.eval_child = None  # the run stays in "evaluating"; redone after restart
        for event, box in self._waiters:
            box.append(RunOutcome("stopped", "daemon stopping"))
            event.set()
        self._waiters.clear()
        self._set("idle", "stopped")
        self._publish_status(force=True)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _rss_kb() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None

"""A run: one candidate adapter, from its data snapshot through bursts to published or not.

A run is a data snapshot, a seed and an initial adapter (the one active when it began),
trained in one or more bursts — a burst the policy stops resumes from the trainer's
checkpoint — then evaluated against the adapter serving at that moment and published or
rejected (:mod:`agent.services.publish`). Its state lives in ``<state_dir>/run/run.json``
(:mod:`agent.services.run_files`) so a restarted daemon resumes it; a run killed mid-publish
is recognised by its run id in the registry's manifests and not published twice.

A crashing trainer is retried after a growing pause, resuming from the last good checkpoint;
after :data:`MAX_RUN_FAILURES` crashes in a row (or one refused input) the run is abandoned.

Everything here runs on the daemon's main loop; the daemon's config, registry, store, policy
and status are reached through the :class:`~agent.services.daemon.Daemon` it belongs to.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.backoff import Backoff
from agent.core.eval_gate import GateResult, judge
from agent.core.policy import Decision
from agent.core.status import BurstMetrics, Progress
from agent.services.burst import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ChildJob,
    MetricsTail,
    describe_exit,
)
from agent.services.publish import (
    RunOutcome,
    finished_in_registry,
    gate_losses,
    publish_or_reject,
    read_eval_losses,
    serving_adapter,
)
from agent.services.run_children import child_job, eval_argv, trainer_argv
from agent.services.run_files import reap_orphan_trainer
from agent.services.runstate import RunState, training_hash
from agent.services.snapshot import remove_snapshot, snapshot_examples

if TYPE_CHECKING:
    from agent.services.daemon import Daemon

log = logging.getLogger(__name__)

# Consecutive crashes of one run before it is abandoned (its data snapshot and checkpoint go).
MAX_RUN_FAILURES = 3


class RunLifecycle:
    """The run in progress and its children (trainer, evaluator); one per daemon.

    Args:
        daemon: the daemon it runs for (config, registry, store, policy, status).
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.files = daemon.files
        self.reporter = daemon.reporter
        self.memory = self.files.read_memory()
        self.run: RunState | None = None
        self.train_child: ChildJob | None = None
        self.eval_child: ChildJob | None = None
        self.eval_started = 0.0
        self.eval_against: tuple[str, str] = ("initial", "")
        self.metrics: MetricsTail | None = None
        # New examples since the last finished run, recounted when the store changes.
        self.seen_change_seq: int | None = None
        self.new_examples = 0
        self.data_short_at: int | None = None  # change_seq when data was too short to run
        self.data_short_reason = "waiting: not enough data"
        self.constraints_hold_at: float | None = None
        self.first_step_latency_s: float | None = None
        self.burst_started = 0.0
        self.burst_start_step = 0
        self.burst_losses: list[float] = []
        self.stop_reason = ""
        self.waiters: list[tuple[threading.Event, list[RunOutcome]]] = []
        # a crashing trainer must not be restarted in a tight loop
        timings = daemon.timings
        self.backoff = Backoff(timings.failure_backoff_s,
                               max(timings.failure_backoff_s, timings.failure_backoff_max_s),
                               0.0)
        self.retry_at: float | None = None
        self.retry_reason = "waiting: last burst failed"

    # ------------------------------------------------------------------ restart
    def recover(self) -> None:
        """Resume the run a previous daemon left (stopping a trainer it left running)."""
        self.run = self.files.read_run()
        if self.run is None:
            return
        log.info("resuming run %s (phase %s, step %d) left by the previous daemon",
                 self.run.run_id, self.run.phase, self.run.steps_done)
        reap_orphan_trainer(self.run.trainer_pid, self.files.checkpoint_dir,
                            self.daemon.timings.stop_grace_s)

    # ------------------------------------------------------------------ new data
    def refresh_new_examples(self) -> None:
        """Count the examples since the last finished run (only when the store changed)."""
        store = self.daemon.store
        seq = int(store.counts()["change_seq"])
        if seq == self.seen_change_seq:
            return
        examples, _ = store.examples_since(self.memory.cursor, split="all", limit=1_000_000)
        self.new_examples = len(examples)
        self.seen_change_seq = seq

    # ------------------------------------------------------------------ starting
    def consider_start(self) -> None:
        """Nothing runs: start a run or its next burst if the policy says so."""
        if self.retry_at is not None:
            left = self.retry_at - time.monotonic()
            if left > 0:
                self.reporter.set("waiting", self.retry_reason + f"; next try in {left:.0f} s")
                return
            self.retry_at = None
        decision = self.daemon.decide(training=False)
        if not decision.train:
            self.constraints_hold_at = None
            self.reporter.set("waiting", decision.reason, blocked_by=decision.blocked_by)
            return
        if self.constraints_hold_at is None:
            self.constraints_hold_at = time.monotonic()
        self._start_run_or_burst(decision)

    def _start_run_or_burst(self, decision: Decision) -> None:
        if self.run is None:
            seq = self.seen_change_seq
            if self.data_short_at is not None and seq == self.data_short_at:
                self.reporter.set("waiting", self.data_short_reason,
                                  blocked_by=("min_examples",))
                return
            if not self._new_run():
                return
        run = self.run
        assert run is not None
        if run.phase in ("evaluating", "publishing"):
            stored = finished_in_registry(self.daemon.registry, run.run_id)
            if stored or not self.files.candidate(run.run_id).is_dir():
                self._finish_run(RunOutcome("published", "already stored before restart")
                                 if stored
                                 else RunOutcome("failed", "candidate lost after a restart"))
                return
            self._start_eval()
            return
        if not Path(run.init_adapter).is_dir():
            log.warning("run %s: its initial adapter %s is gone; starting afresh", run.run_id,
                        run.init_adapter)
            self.discard_run()
            return
        self._start_burst(decision)

    def _new_run(self) -> bool:
        cfg = self.daemon.config
        registry = self.daemon.registry
        run_id = f"run-{self.memory.runs + 1:04d}-{uuid.uuid4().hex[:6]}"
        directory = self.files.run_dir
        snap = snapshot_examples(self.daemon.store, directory,
                                 heldout_share=cfg.data.heldout_share,
                                 max_examples=cfg.data.max_examples,
                                 max_heldout=cfg.adapters.eval_max_examples)
        need_held = cfg.data.min_heldout_examples
        if snap.n_train == 0 or snap.n_heldout < need_held:
            remove_snapshot(directory)
            self.data_short_at = self.seen_change_seq
            self.data_short_reason = (
                f"waiting: not enough data ({snap.n_train} training, {snap.n_heldout} held-out "
                f"examples; need >= 1 and >= {need_held})")
            self.reporter.set("waiting", self.data_short_reason, blocked_by=("min_examples",))
            return False
        self.data_short_at = None
        active = registry.active()
        init_version = active or "initial"
        init_dir = registry.path_of(active) if active else registry.validator.initial_dir  # type: ignore[union-attr]
        seed = (cfg.training.seed + self.memory.runs * 1_000_003) % (2**63)
        self.run = RunState(
            run_id=run_id, seed=seed, init_adapter=str(init_dir), init_version=init_version,
            cursor=snap.cursor, n_train=snap.n_train, n_heldout=snap.n_heldout,
            created_at=self.daemon.clock(), manual=self.daemon.manual is not None,
            training_hash=training_hash(cfg.training))
        self.memory = self.memory.model_copy(update={"runs": self.memory.runs + 1})
        self.files.write_memory(self.memory)
        # A new run never mixes with an old checkpoint generation.
        self.files.clear_checkpoints()
        self._write_run()
        log.info("new run %s: %d training / %d held-out examples, from adapter %s",
                 run_id, snap.n_train, snap.n_heldout, init_version,
                 extra={"RUN_ID": run_id, "ADAPTER": init_version})
        return True

    # ------------------------------------------------------------------ bursts
    def _start_burst(self, decision: Decision) -> None:
        run = self.run
        assert run is not None
        cfg = self.daemon.config
        if run.training_hash and run.training_hash != training_hash(cfg.training):
            log.info("run %s: [training] changed since it started; starting a new run",
                     run.run_id)
            self.discard_run()
            return
        run = run.model_copy(update={"attempts": run.attempts + 1, "phase": "training"})
        self.run = run
        self._write_run()
        metrics_path = self.files.metrics_path
        self.metrics = MetricsTail(metrics_path, metrics_path.stat().st_size
                                   if metrics_path.exists() else 0)
        child = child_job(cfg, "train", trainer_argv(cfg, run, self.files, self.daemon.python),
                          self.files, self.daemon.systemd_run, f"{run.run_id}-{run.attempts}")
        try:
            child.start()
        except OSError as exc:
            self._burst_failed(f"could not start the trainer: {exc}", keep_run=False)
            return
        self.train_child = child
        self.run = run = run.model_copy(update={"trainer_pid": child.pid})
        self._write_run()
        self.burst_started = self.daemon.clock()
        self.burst_start_step = run.steps_done
        self.burst_losses = []
        self.stop_reason = ""
        total = cfg.training.steps_per_burst
        self.reporter.set("training", decision.reason,
                          progress=Progress(step=run.steps_done, total=total, loss=None,
                                            started_at=self.burst_started), blocked_by=())
        log.info("burst %d of run %s started (pid %s, %s)", run.attempts, run.run_id,
                 child.pid, f"resuming at step {run.steps_done}" if run.steps_done else
                 "fresh")

    def stop_burst(self, reason: str) -> None:
        """SIGTERM the trainer: it checkpoints and exits resumable (``reason`` is recorded)."""
        assert self.train_child is not None
        self.stop_reason = reason
        self.train_child.terminate()

    def follow_burst(self) -> None:
        """A burst runs: take its progress, stop it when the policy says so, end it."""
        child = self.train_child
        run = self.run
        assert child is not None and run is not None
        self.read_metrics()
        code = child.poll()
        if code is not None:
            self.read_metrics()
            self.train_child = None
            self._burst_ended(code, child)
            return
        if child.term_sent_at is None:
            decision = self.daemon.decide(training=True)
            paused = self.daemon.paused
            if not decision.train or paused is not None:
                reason = paused or decision.reason
                log.info("stopping the burst: %s", reason)
                self.stop_burst(reason)
                self.reporter.set("training", reason, progress=self.reporter.status.progress,
                                  blocked_by=decision.blocked_by)
        elif child.overdue(self.daemon.timings.stop_grace_s):
            log.warning("trainer did not checkpoint within %.0f s; killing it",
                        self.daemon.timings.stop_grace_s)
            child.kill()

    def read_metrics(self) -> None:
        """Take the trainer's new metrics lines into the run and the status."""
        if self.metrics is None or self.run is None:
            return
        rows = [r for r in self.metrics.read() if "step" in r and "loss" in r]
        if not rows:
            return
        if self.first_step_latency_s is None and self.constraints_hold_at is not None:
            self.first_step_latency_s = time.monotonic() - self.constraints_hold_at
            log.info("first ZO step %.2f s after the constraints held",
                     self.first_step_latency_s)
        last = rows[-1]
        self.burst_losses += [float(r["loss"]) for r in rows if _finite(r.get("loss"))]
        self.run = self.run.model_copy(update={"steps_done": int(last["step"])})
        progress = Progress(step=int(last["step"]),
                            total=self.daemon.config.training.steps_per_burst,
                            loss=float(last["loss"]) if _finite(last.get("loss")) else None,
                            started_at=self.burst_started)
        self.reporter.set("training", self.reporter.status.reason, progress=progress)
        if self.daemon.on_state_change:
            self.daemon.on_state_change()

    def _burst_ended(self, code: int, child: ChildJob) -> None:
        run = self.run
        assert run is not None
        self.memory = self.memory.model_copy(update={"last_burst_end": self.daemon.clock()})
        self.files.write_memory(self.memory)
        self.constraints_hold_at = None
        if code == -signal.SIGTERM and child.term_sent_at is not None:
            # stopped before its handler was installed (still importing): nothing was lost
            code = EXIT_INTERRUPTED
        if code in (EXIT_OK, EXIT_INTERRUPTED):
            self.backoff.reset()
        if code == EXIT_OK:
            log.info("burst of run %s finished at step %d; evaluating", run.run_id,
                     run.steps_done)
            self.run = run.model_copy(update={"phase": "evaluating", "failures": 0})
            self._write_run()
            self._start_eval()
            return
        if code == EXIT_INTERRUPTED:
            why = self.stop_reason or "asked to stop"
            total = self.daemon.config.training.steps_per_burst
            reason = (f"burst stopped at step {run.steps_done}/{total} ({why}); it resumes "
                      "from its checkpoint")
            self._record_burst("stopped", reason)
            self._write_run()
            self.reporter.set("waiting", reason)
            return
        why = describe_exit(code)
        detail = child.last_error_line()
        reason = f"trainer {why}" + (f": {detail}" if detail else "")
        log.error("burst of run %s failed: %s", run.run_id, reason)
        self._burst_failed(reason, keep_run=code != EXIT_BAD_INPUT)

    def _burst_failed(self, reason: str, *, keep_run: bool) -> None:
        run = self.run
        self._record_burst("failed", reason)
        delay = self.backoff.next_delay()
        self.retry_at = time.monotonic() + delay
        self.retry_reason = f"waiting: last burst failed ({reason[:200]})"
        if run is not None:
            failures = run.failures + 1
            self.run = run.model_copy(update={"failures": failures})
            if not keep_run or failures >= MAX_RUN_FAILURES:
                log.warning("abandoning run %s after %d failure(s)", run.run_id, failures)
                self._finish_run(RunOutcome("failed", reason, steps=run.steps_done),
                                 record=False, advance_cursor=False)
            else:
                self._write_run()
        self.reporter.set("waiting", f"last burst failed ({reason}); "
                          + ("the next one resumes from the last good checkpoint" if keep_run
                             else "the next one starts afresh"))

    def _record_burst(self, outcome: str, reason: str, **extra: Any) -> None:
        run = self.run
        clock = self.daemon.clock
        steps = (run.steps_done - self.burst_start_step) if run else 0
        seconds = max(1e-9, clock() - self.burst_started) if self.burst_started else None
        metrics = BurstMetrics(
            started_at=self.burst_started or clock(), ended_at=clock(),
            steps=max(0, steps), outcome=outcome, reason=reason[:500],  # type: ignore[arg-type]
            train_loss_start=self.burst_losses[0] if self.burst_losses else None,
            train_loss_end=self.burst_losses[-1] if self.burst_losses else None,
            steps_per_s=(steps / seconds) if seconds and steps > 0 else None, **extra)
        self.reporter.update(last_burst=metrics)

    # ------------------------------------------------------------------ eval + publish
    def _start_eval(self) -> None:
        run = self.run
        assert run is not None
        cfg = self.daemon.config
        candidate = self.files.candidate(run.run_id)
        self.eval_against = serving_adapter(self.daemon.registry, run)
        argv = eval_argv(cfg, candidate, self.eval_against[1], self.files, self.daemon.python)
        child = child_job(cfg, "eval", argv, self.files, self.daemon.systemd_run,
                          f"{run.run_id}-eval")
        try:
            child.log_path.unlink(missing_ok=True)
            child.start()
        except OSError as exc:
            self._burst_failed(f"could not start the evaluation: {exc}", keep_run=False)
            return
        self.eval_child = child
        self.eval_started = time.monotonic()
        self.reporter.set("evaluating", f"held-out loss of the candidate vs "
                          f"{self.eval_against[0]} on {run.n_heldout} examples")

    def follow_eval(self) -> None:
        """An evaluation runs: when it ends, judge the candidate and publish or reject it."""
        child = self.eval_child
        run = self.run
        assert child is not None and run is not None
        timeout_s = self.daemon.timings.eval_timeout_s
        code = child.poll()
        if code is None:
            if time.monotonic() - self.eval_started > timeout_s:
                log.error("evaluation ran over %.0f s; killing it", timeout_s)
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
        output = child.log_tail(64_000)
        candidate = self.files.candidate(run.run_id)
        try:
            cand, active, examples = read_eval_losses(output, candidate, self.eval_against[1])
        except (TypeError, KeyError, ValueError) as exc:
            self._finish_run(RunOutcome("failed", f"evaluation output unreadable ({exc})",
                                        steps=run.steps_done))
            return
        cfg = self.daemon.config
        gate = judge(cand, active, margin=cfg.adapters.eval_margin,
                     mode=cfg.adapters.eval_margin_mode, examples=examples,
                     min_examples=cfg.data.min_heldout_examples)
        log.info("eval gate for run %s: %s", run.run_id, gate.reason)
        self._publish_or_reject(gate, candidate)

    def _publish_or_reject(self, gate: GateResult, candidate: Path) -> None:
        run = self.run
        assert run is not None

        def publishing() -> None:
            self.run = run.model_copy(update={"phase": "publishing"})
            self._write_run()
            self.reporter.set("publishing", gate.reason)
            self.reporter.publish()

        outcome = publish_or_reject(
            gate, candidate, run, registry=self.daemon.registry,
            compared_with=self.eval_against[0],
            train_loss_end=self.burst_losses[-1] if self.burst_losses else None,
            tell_service=self.daemon.tell_service, before_publish=publishing)
        self._finish_run(outcome, extra=gate_losses(gate))

    # ------------------------------------------------------------------ ending
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
                self.seen_change_seq = None  # recount new examples
            self.memory = self.memory.model_copy(update={"last_burst_end": self.daemon.clock()})
            self.files.write_memory(self.memory)
            self.files.remove_candidate(run.run_id)
        self.discard_run()
        outcome.loss = self.burst_losses[-1] if self.burst_losses else None
        self.daemon.manual = None
        self._tell_waiters(outcome)
        self.reporter.update(active_adapter=self.daemon.active_version())
        self.reporter.set("waiting", f"last run {outcome.outcome}: {outcome.reason}")
        if self.daemon.on_state_change:
            self.daemon.on_state_change()

    def discard_run(self) -> None:
        """Forget the current run and remove its files (the next start begins a new one)."""
        self.run = None
        self.files.discard_run()

    def _write_run(self) -> None:
        if self.run is not None:
            self.files.write_run(self.run)

    # ------------------------------------------------------------------ waiters, stop
    def wait_for_run(self, timeout: float) -> RunOutcome | None:
        """Block until the current/next run ends (for a fleet train-now)."""
        event, box = threading.Event(), []  # type: ignore[var-annotated]
        self.waiters.append((event, box))
        event.wait(timeout)
        return box[0] if box else None

    def _tell_waiters(self, outcome: RunOutcome) -> None:
        for event, box in self.waiters:
            box.append(outcome)
            event.set()
        self.waiters.clear()

    def stop(self) -> None:
        """The daemon stops: a running burst checkpoints first (bounded), an evaluation is
        killed; whoever waits for the run is told."""
        grace_s = self.daemon.timings.stop_grace_s
        if self.train_child is not None:
            log.info("stopping the burst before exit (up to %.0f s)", grace_s)
            self.stop_reason = "daemon stopping"
            child = self.train_child
            code = child.stop(grace_s)
            self.read_metrics()
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
        self._tell_waiters(RunOutcome("stopped", "daemon stopping"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)

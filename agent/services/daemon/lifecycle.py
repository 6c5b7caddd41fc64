"""A run: one candidate adapter, from its data snapshot through bursts to published or not.

A run is a data snapshot, a seed and an initial adapter (the one active when it began:
:mod:`agent.services.daemon.run_start`), trained in one or more bursts — a burst the policy stops
resumes from the trainer's checkpoint — then evaluated against the adapter serving at that
moment and published or rejected (:mod:`agent.services.daemon.evaluation`,
:mod:`agent.services.daemon.publish`). Its state lives in ``<state_dir>/run/run.json``
(:mod:`agent.services.daemon.run_files`) so a restarted daemon resumes it; a run killed mid-publish
is recognised by its run id in the registry's manifests and not published twice.

Its bursts — the trainer, its crashes and the pause before a retry — are
:mod:`agent.services.daemon.bursts`.

Everything here runs on the daemon's main loop; what it needs (config, store, registry, files,
clock, launcher, policy, status, the user's wishes) comes in one
:class:`~agent.services.daemon.run_context.RunContext`, never the daemon itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.core.eval_gate import GateResult
from agent.core.policy import Decision
from agent.services.daemon import purge_cleanup
from agent.services.daemon.bursts import MAX_RUN_FAILURES, RunBursts
from agent.services.daemon.evaluation import CandidateEval, EvalFailed
from agent.services.daemon.publish import (
    RunOutcome,
    finished_in_registry,
    gate_losses,
    publish_or_reject,
)
from agent.services.daemon.run_context import RunContext
from agent.services.daemon.run_files import reap_orphan_trainer
from agent.services.daemon.run_start import NotEnoughData, open_run
from agent.services.daemon.runstate import RunState

log = logging.getLogger(__name__)

__all__ = ["MAX_RUN_FAILURES", "RunLifecycle"]


class RunLifecycle:
    """The run in progress and its children (trainer, evaluator); one per daemon.

    Args:
        ctx: its collaborators (config, store, registry, files, clock, policy, status).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.files = ctx.files
        self.reporter = ctx.reporter
        self.memory = self.files.read_memory()
        self.run: RunState | None = None
        self.bursts = RunBursts(self)
        self.evaluation = CandidateEval(ctx)
        # New examples since the last finished run, recounted when the store changes.
        self.seen_change_seq: int | None = None
        self.new_examples = 0
        self.data_short_at: int | None = None  # change_seq when data was too short to run
        self.data_short_reason = "waiting: not enough data"
        self.waiters: list[tuple[threading.Event, list[RunOutcome]]] = []

    # ------------------------------------------------------------------ restart
    def recover(self) -> None:
        """Resume the run a previous daemon left (stopping a trainer it left running)."""
        self.run = self.files.read_run()
        if self.run is None:
            return
        log.info("resuming run %s (phase %s, step %d) left by the previous daemon",
                 self.run.run_id, self.run.phase, self.run.steps_done)
        reap_orphan_trainer(self.run.trainer_pid, self.files.checkpoint_dir,
                            self.ctx.config().daemon.stop_grace_s)

    # ------------------------------------------------------------------ purges
    def check_purges(self) -> bool:
        """After a store purge (CLI or fleet), remove what was trained on the purged rows.

        See :mod:`agent.services.daemon.purge_cleanup`: the run in progress if its snapshot
        may hold a purged row, every leftover candidate and checkpoint, and every adapter
        version trained on purged rows (rolling back first when one of them is active).
        Returns whether there was a new purge (the caller clears its federated state too).
        """
        newest, first_seq = self.ctx.store.purges_after(self.memory.purge_seen)
        if first_seq is None:
            return False
        log.info("the store was purged (from insertion seq %d): removing what was trained "
                 "on the purged rows", first_seq)
        run = self.run
        if run is not None and purge_cleanup.run_trained_on(run.data_seq, first_seq):
            self.bursts.stop()
            self.evaluation.stop()
            self.finish_run(RunOutcome("failed", "its training data was purged"),
                            advance_cursor=False)
        self._forget_adapters(first_seq)
        self._remove_leftovers()
        self.seen_change_seq = None  # recount the new examples
        self.data_short_at = None
        self.remember(purge_seen=newest)
        return True

    def _forget_adapters(self, first_seq: int) -> None:
        registry = self.ctx.registry
        tainted = purge_cleanup.tainted_versions(registry.list(), first_seq)
        if not tainted:
            return
        pointer = registry.pointer()
        active = pointer.version if pointer else None
        history = list(pointer.history) if pointer else []
        to = purge_cleanup.fallback_version(history, registry.versions(), tainted)
        registry.forget(tainted, activate=to)
        if active in tainted:
            log.warning("active adapter %s was trained on purged data: now serving %s",
                        active, to)
            refused = self.ctx.tell_service(to)
            if refused:
                log.error("the inference service refused %s after the purge: %s", to, refused)
            self.reporter.update(active_adapter=to)
            self.ctx.state_changed()

    def _remove_leftovers(self) -> None:
        """Candidates and checkpoints that belong to no run in progress."""
        keep = self.run.run_id if self.run is not None else None
        if keep is None:
            self.files.clear_checkpoints()
        base = self.files.candidates_dir
        if base.is_dir():
            for path in base.iterdir():
                if path.name != keep:
                    self.files.remove_candidate(path.name)

    # ------------------------------------------------------------------ new data
    def refresh_new_examples(self) -> None:
        """Count the examples since the last finished run (only when the store changed)."""
        store = self.ctx.store
        seq = int(store.counts()["change_seq"])
        if seq == self.seen_change_seq:
            return
        examples, _ = store.examples_since(self.memory.cursor, split="all", limit=1_000_000)
        self.new_examples = len(examples)
        self.seen_change_seq = seq

    # ------------------------------------------------------------------ starting
    def consider_start(self) -> None:
        """Nothing runs: start a run or its next burst if the policy says so."""
        if self.bursts.waiting_to_retry():
            return
        decision = self.ctx.decide(False)
        self.bursts.constraints_hold(decision.train)
        if not decision.train:
            self.reporter.set("waiting", decision.reason, blocked_by=decision.blocked_by)
            return
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
            stored = finished_in_registry(self.ctx.registry, run.run_id)
            if stored or not self.files.candidate(run.run_id).is_dir():
                self.finish_run(RunOutcome("published", "already stored before restart")
                                if stored
                                else RunOutcome("failed", "candidate lost after a restart"))
                return
            self.start_eval()
            return
        if not Path(run.init_adapter).is_dir():
            log.warning("run %s: its initial adapter %s is gone; starting afresh", run.run_id,
                        run.init_adapter)
            self.discard_run()
            return
        self.bursts.start(decision)

    def _new_run(self) -> bool:
        opened = open_run(self.ctx, self.memory.runs, self.memory.trained_steps)
        if isinstance(opened, NotEnoughData):
            self.data_short_at = self.seen_change_seq
            self.data_short_reason = opened.reason
            self.reporter.set("waiting", opened.reason, blocked_by=("min_examples",))
            return False
        self.data_short_at = None
        self.run = run = opened
        self.remember(runs=self.memory.runs + 1)
        # A new run never mixes with an old checkpoint generation.
        self.files.clear_checkpoints()
        self.write_run()
        log.info("new run %s: %d training / %d held-out examples, from adapter %s",
                 run.run_id, run.n_train, run.n_heldout, run.init_version,
                 extra={"RUN_ID": run.run_id, "ADAPTER": run.init_version})
        return True

    # ------------------------------------------------------------------ eval + publish
    def start_eval(self) -> None:
        """Evaluate the run's candidate (its burst finished)."""
        run = self.run
        assert run is not None
        try:
            self.evaluation.start(run, self.files.candidate(run.run_id))
        except OSError as exc:
            self.bursts.failed(f"could not start the evaluation: {exc}", keep_run=False)
            return
        self.reporter.set("evaluating", f"held-out loss of the candidate vs "
                          f"{self.evaluation.against[0]} on {run.n_heldout} examples")

    def follow_eval(self) -> None:
        """An evaluation runs: when it ends, publish or reject the candidate as judged."""
        run = self.run
        assert run is not None
        candidate = self.files.candidate(run.run_id)
        verdict = self.evaluation.follow(run, candidate)
        if verdict is None:
            return
        if isinstance(verdict, EvalFailed):
            self.ctx.metrics.verdict(verdict.outcome.outcome)
            self.finish_run(verdict.outcome, advance_cursor=verdict.advance_cursor)
            return
        self._publish_or_reject(verdict, candidate)

    def _publish_or_reject(self, gate: GateResult, candidate: Path) -> None:
        run = self.run
        assert run is not None

        def publishing() -> None:
            self.run = run.model_copy(update={"phase": "publishing"})
            self.write_run()
            self.reporter.set("publishing", gate.reason)
            self.reporter.publish()

        outcome = publish_or_reject(
            gate, candidate, run, registry=self.ctx.registry,
            compared_with=self.evaluation.against[0],
            train_loss_end=self.bursts.progress.last_loss,
            tell_service=self.ctx.tell_service, before_publish=publishing)
        self.ctx.metrics.verdict(outcome.outcome)
        self.finish_run(outcome, extra=gate_losses(gate))

    # ------------------------------------------------------------------ ending
    def finish_run(self, outcome: RunOutcome, *, record: bool = True,
                   advance_cursor: bool = True, extra: dict[str, Any] | None = None) -> None:
        """End the current run: record it, clear its checkpoint, data and candidate."""
        run = self.run
        if record:
            self.bursts.record(outcome.outcome, outcome.reason,
                               adapter_version=outcome.adapter_version, **(extra or {}))
        log.info("run %s ended: %s (%s)", run.run_id if run else "?", outcome.outcome,
                 outcome.reason, extra={"RUN_ID": run.run_id if run else "",
                                        "OUTCOME": outcome.outcome,
                                        "ADAPTER": outcome.adapter_version or ""})
        if run is not None:
            if advance_cursor:
                self.memory = self.memory.model_copy(update={"cursor": run.cursor})
                self.seen_change_seq = None  # recount new examples
            # the lr schedule runs on across runs ([training] total_steps)
            self.remember(last_burst_end=self.ctx.clock(),
                          trained_steps=self.memory.trained_steps + run.steps_done)
            self.files.remove_candidate(run.run_id)
        self.discard_run()
        outcome.loss = self.bursts.progress.last_loss
        self.ctx.wishes.manual = None
        self._tell_waiters(outcome)
        self.reporter.update(active_adapter=self.reporter.active_version())
        self.reporter.set("waiting", f"last run {outcome.outcome}: {outcome.reason}")
        self.ctx.state_changed()

    def abandon(self, reason: str) -> None:
        """End the run in progress, if any, as failed; its examples stay for the next run."""
        if self.run is None:
            return
        self.bursts.stop()
        self.evaluation.stop()
        self.finish_run(RunOutcome("failed", reason), advance_cursor=False)

    def discard_run(self) -> None:
        """Forget the current run and remove its files (the next start begins a new one)."""
        self.run = None
        self.files.discard_run()

    def write_run(self) -> None:
        """Write the current run's state (``run.json``), if there is a run."""
        if self.run is not None:
            self.files.write_run(self.run)

    def remember(self, **update: Any) -> None:
        """Change the daemon's memory (``daemon.json``) and write it."""
        self.memory = self.memory.model_copy(update=update)
        self.files.write_memory(self.memory)

    # ------------------------------------------------------------------ waiters, stop
    def wait_for_run(self, timeout: float,
                     give_up: Callable[[], bool] | None = None) -> RunOutcome | None:
        """Block until the current/next run ends (for a fleet train-now), or ``give_up()``
        (polled every 0.1 s: the fleet canceled the job)."""
        event, box = threading.Event(), list[RunOutcome]()
        self.waiters.append((event, box))
        deadline = time.monotonic() + timeout
        while not event.wait(max(0.0, min(0.1, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or (give_up is not None and give_up()):
                break  # the waiter stays listed; the run's end fills a box nobody reads
        return box[0] if box else None

    def _tell_waiters(self, outcome: RunOutcome) -> None:
        for event, box in self.waiters:
            box.append(outcome)
            event.set()
        self.waiters.clear()

    def stop(self) -> None:
        """The daemon stops: a running burst checkpoints first (bounded), an evaluation is
        killed; whoever waits for the run is told."""
        self.bursts.stop()
        self.evaluation.stop()
        self._tell_waiters(RunOutcome("stopped", "daemon stopping"))

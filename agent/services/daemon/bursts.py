"""A run's bursts: the trainer child started, followed, stopped, and what its exit means.

A burst trains the current run for up to ``steps_per_burst`` steps in a trainer child
(:func:`~agent.services.daemon.children.trainer_argv`). The policy is asked again while it runs;
when it no longer allows training (or the user pauses) the trainer gets SIGTERM, checkpoints
and exits resumable, and is killed if it has not within ``stop_grace_s``. Whatever happens, a
trainer still running ``max_seconds_per_burst + stop_grace_s`` after its start is killed (it
stops itself at ``max_seconds_per_burst``; one that hangs or is SIGSTOPped does not). A
finished burst sends the run to evaluation; a stopped one resumes from its checkpoint at the
next start.
A crashing trainer is retried after a growing pause, resuming from the last good checkpoint;
after :data:`MAX_RUN_FAILURES` crashes in a row (or one refused input) the run is abandoned.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

from agent.core.backoff import Backoff
from agent.core.policy import Decision
from agent.core.status import Progress
from agent.io.children.process import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ChildProcess,
    describe_exit,
)
from agent.services.daemon.children import trainer_argv
from agent.services.daemon.metrics import stop_reason
from agent.services.daemon.progress import BurstProgress, finite
from agent.services.daemon.publish import RunOutcome
from agent.services.daemon.run_context import RunContext
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.runstate import RunState, training_hash
from agent.services.daemon.status import StatusReporter

log = logging.getLogger(__name__)

# Consecutive crashes of one run before it is abandoned (its data snapshot and checkpoint go).
MAX_RUN_FAILURES = 3


class BurstOwner(Protocol):
    """What the bursts need of the run lifecycle they belong to
    (:class:`~agent.services.daemon.lifecycle.RunLifecycle`)."""

    run: RunState | None
    ctx: RunContext
    files: RunFiles
    reporter: StatusReporter

    def write_run(self) -> None: ...

    def discard_run(self) -> None: ...

    def start_eval(self) -> None: ...

    def remember(self, **update: Any) -> None: ...

    def finish_run(self, outcome: RunOutcome, *, record: bool = True,
                   advance_cursor: bool = True, extra: dict[str, Any] | None = None) -> None: ...


class RunBursts:
    """The bursts of the lifecycle's current run (one trainer at a time).

    Args:
        runs: the lifecycle whose run the bursts train (its run, files and context).
    """

    def __init__(self, runs: BurstOwner) -> None:
        self.runs = runs
        self.ctx = ctx = runs.ctx
        self.files = runs.files
        self.reporter = runs.reporter
        self.child: ChildProcess | None = None
        self.progress = BurstProgress(ctx.clock, ctx.monotonic)
        self.constraints_hold_at: float | None = None
        self.first_step_latency_s: float | None = None
        # a crashing trainer must not be restarted in a tight loop
        timings = ctx.config().daemon
        self.backoff = Backoff(timings.failure_backoff_s,
                               max(timings.failure_backoff_s, timings.failure_backoff_max_s),
                               0.0)
        self.retry_at: float | None = None
        self.retry_reason = "waiting: last burst failed"
        # the last burst's end on the wall clock (stored, shown) and on the monotonic clock
        # (what the cooldown counts with, so an NTP step neither ends nor stretches it)
        self._ended_wall: float | None = None
        self._ended_mono = 0.0

    def waiting_to_retry(self) -> bool:
        """Whether the pause after a failed burst still runs (the status says how long)."""
        if self.retry_at is not None:
            left = self.retry_at - self.ctx.monotonic()
            if left > 0:
                self.reporter.set("waiting", self.retry_reason + f"; next try in {left:.0f} s")
                return True
            self.retry_at = None
        return False

    def seconds_since_end(self, last_end: float | None) -> float | None:
        """Seconds since the last burst ended (``last_end``: its stored wall-clock time).

        Counted on the monotonic clock. A burst that ended before this process started is
        placed once by the wall clock (never in the future: a clock set back since then
        counts from now) and counted monotonically from there.
        """
        if last_end is None:
            return None
        if self._ended_wall != last_end:
            self._ended_wall = last_end
            self._ended_mono = self.ctx.monotonic() - max(0.0, self.ctx.clock() - last_end)
        return max(0.0, self.ctx.monotonic() - self._ended_mono)

    def constraints_hold(self, hold: bool) -> None:
        """Whether the policy allows training now; the first-step latency counts from the
        moment it began to."""
        if not hold:
            self.constraints_hold_at = None
        elif self.constraints_hold_at is None:
            self.constraints_hold_at = self.ctx.monotonic()

    def start(self, decision: Decision) -> None:
        """Start the run's next burst (or a new run, if [training] changed since it began)."""
        runs = self.runs
        run = runs.run
        assert run is not None
        cfg = self.ctx.config()
        if run.training_hash and run.training_hash != training_hash(cfg.training):
            log.info("run %s: [training] changed since it started; starting a new run",
                     run.run_id)
            runs.discard_run()
            return
        run = run.model_copy(update={"attempts": run.attempts + 1, "phase": "training"})
        runs.run = run
        runs.write_run()
        self.progress.watch(self.files.metrics_path)
        # one copy of the weights on the board: the service lets its program go while the
        # trainer runs (the user is idle; a request loads it again and stops the burst)
        note = self.ctx.release_service()
        if note is not None:
            log.warning("the service keeps its program during this burst: %s", note)
        launcher = self.ctx.launcher
        child = launcher.job(cfg, "train", trainer_argv(cfg, run, self.files, launcher.python),
                             self.files, f"{run.run_id}-{run.attempts}")
        try:
            child.start()
        except OSError as exc:
            self.ctx.metrics.burst_ended("failed")
            self.failed(f"could not start the trainer: {exc}", keep_run=False)
            return
        self.child = child
        runs.run = run = run.model_copy(update={"trainer_pid": child.pid})
        runs.write_run()
        self.progress.begin(run.steps_done)
        self.ctx.metrics.burst_started(run.steps_done)
        total = cfg.training.steps_per_burst
        self.reporter.set("training", decision.reason,
                          progress=Progress(step=run.steps_done, total=total, loss=None,
                                            started_at=self.progress.started), blocked_by=())
        log.info("burst %d of run %s started (pid %s, %s)", run.attempts, run.run_id,
                 child.pid, f"resuming at step {run.steps_done}" if run.steps_done else
                 "fresh")

    def stop_burst(self, reason: str) -> None:
        """SIGTERM the trainer: it checkpoints and exits resumable (``reason`` is recorded)."""
        assert self.child is not None
        self.progress.stop_reason = reason
        self.child.terminate()

    def follow(self) -> None:
        """A burst runs: take its progress, stop it when the policy says so, end it."""
        child = self.child
        assert child is not None and self.runs.run is not None
        self.read_metrics()
        code = child.poll()
        if code is not None:
            self.read_metrics()
            self.child = None
            self._ended(code, child)
            return
        if self._past_deadline(child):
            return
        if child.term_sent_at is None:
            decision = self.ctx.decide(True)
            paused = self.ctx.wishes.paused
            if not decision.train or paused is not None:
                reason = paused or decision.reason
                log.info("stopping the burst: %s", reason)
                self.ctx.metrics.stopping(stop_reason(paused, decision.blocked_by))
                self.stop_burst(reason)
                self.reporter.set("training", reason, progress=self.reporter.status.progress,
                                  blocked_by=decision.blocked_by)
        elif child.overdue(grace_s := self.ctx.config().daemon.stop_grace_s):
            log.warning("trainer did not checkpoint within %.0f s; killing it", grace_s)
            child.kill()

    def _past_deadline(self, child: ChildProcess) -> bool:
        """Kill a trainer past its hard deadline; whether it was killed now."""
        cfg = self.ctx.config()
        hard_s = cfg.training.max_seconds_per_burst + cfg.daemon.stop_grace_s
        if child.age() <= hard_s:
            return False
        if child.kill_reason is None:
            log.warning("trainer pid %s still runs %.0f s after its start; killing it",
                        child.pid, child.age())
            self.progress.stop_reason = "over its time limit"
            child.kill(f"ran past its deadline (max_seconds_per_burst + stop_grace_s = "
                       f"{hard_s:.0f} s) and was killed")
        return True

    def read_metrics(self) -> None:
        """Take the trainer's new metrics lines into the run and the status."""
        runs = self.runs
        if runs.run is None:
            return
        rows = self.progress.new_rows()
        if not rows:
            return
        if self.first_step_latency_s is None and self.constraints_hold_at is not None:
            self.first_step_latency_s = self.ctx.monotonic() - self.constraints_hold_at
            log.info("first ZO step %.2f s after the constraints held",
                     self.first_step_latency_s)
        last = rows[-1]
        runs.run = runs.run.model_copy(update={"steps_done": int(last["step"])})
        self.ctx.metrics.stepped(int(last["step"]))
        progress = Progress(step=int(last["step"]),
                            total=self.ctx.config().training.steps_per_burst,
                            loss=float(last["loss"]) if finite(last.get("loss")) else None,
                            started_at=self.progress.started)
        self.reporter.set("training", self.reporter.status.reason, progress=progress)
        self.ctx.state_changed()

    def _ended(self, code: int, child: ChildProcess) -> None:
        runs = self.runs
        run = runs.run
        assert run is not None
        self._ended_wall = ended = self.ctx.clock()
        self._ended_mono = self.ctx.monotonic()
        runs.remember(last_burst_end=ended)
        self.constraints_hold_at = None
        if code == -signal.SIGTERM and child.term_sent_at is not None:
            # stopped before its handler was installed (still importing): nothing was lost
            code = EXIT_INTERRUPTED
        if code in (EXIT_OK, EXIT_INTERRUPTED):
            self.backoff.reset()
        self.ctx.metrics.burst_ended({EXIT_OK: "finished", EXIT_INTERRUPTED: "stopped"}
                                     .get(code, "failed"))
        if code == EXIT_OK:
            log.info("burst of run %s finished at step %d; evaluating", run.run_id,
                     run.steps_done)
            runs.run = run.model_copy(update={"phase": "evaluating", "failures": 0})
            runs.write_run()
            runs.start_eval()
            return
        if code == EXIT_INTERRUPTED:
            why = self.progress.stop_reason or "asked to stop"
            total = self.ctx.config().training.steps_per_burst
            reason = (f"burst stopped at step {run.steps_done}/{total} ({why}); it resumes "
                      "from its checkpoint")
            self.record("stopped", reason)
            runs.write_run()
            self.reporter.set("waiting", reason)
            return
        why = child.kill_reason or describe_exit(code)
        detail = child.last_error_line()
        reason = f"trainer {why}" + (f": {detail}" if detail else "")
        log.error("burst of run %s failed: %s", run.run_id, reason)
        self.failed(reason, keep_run=code != EXIT_BAD_INPUT)

    def failed(self, reason: str, *, keep_run: bool) -> None:
        """A child of the run failed: pause before the next try; abandon the run after too
        many failures or when ``keep_run`` is False."""
        runs = self.runs
        run = runs.run
        self.record("failed", reason)
        delay = self.backoff.next_delay()
        self.retry_at = self.ctx.monotonic() + delay
        self.retry_reason = f"waiting: last burst failed ({reason[:200]})"
        if run is not None:
            failures = run.failures + 1
            runs.run = run.model_copy(update={"failures": failures})
            if not keep_run or failures >= MAX_RUN_FAILURES:
                log.warning("abandoning run %s after %d failure(s)", run.run_id, failures)
                runs.finish_run(RunOutcome("failed", reason, steps=run.steps_done),
                                record=False, advance_cursor=False)
            else:
                runs.write_run()
        self.reporter.set("waiting", f"last burst failed ({reason}); "
                          + ("the next one resumes from the last good checkpoint" if keep_run
                             else "the next one starts afresh"))

    def record(self, outcome: str, reason: str, **extra: Any) -> None:
        """Show how the last burst (or its run) ended in the status."""
        run = self.runs.run
        self.reporter.update(last_burst=self.progress.record(
            outcome, reason, run.steps_done if run else None, **extra))

    def stop(self) -> None:
        """The daemon stops: a running trainer checkpoints first (bounded by stop_grace_s)."""
        child = self.child
        if child is None:
            return
        runs = self.runs
        grace_s = self.ctx.config().daemon.stop_grace_s
        log.info("stopping the burst before exit (up to %.0f s)", grace_s)
        self.progress.stop_reason = "daemon stopping"
        self.ctx.metrics.stopping("shutdown")
        code = child.stop(grace_s)
        self.read_metrics()
        self.child = None
        if code is not None:
            if code == EXIT_OK:
                # finished just now: evaluate after the restart, not during shutdown
                runs.run = runs.run.model_copy(update={"phase": "evaluating"})  # type: ignore[union-attr]
                runs.write_run()
            else:
                self._ended(code, child)

"""A run's evaluation step: the evaluator child, its timeout, and the eval gate's verdict.

A run whose burst finished is evaluated by a child process
(:func:`~agent.services.daemon.children.eval_argv`) that prints the held-out losses of the
candidate and of the adapter serving at that moment — not the run's initial adapter: a
rollback may have happened while it trained. :func:`agent.core.eval_gate.judge` turns them
into a verdict, which :mod:`agent.services.daemon.publish` acts on. An evaluator that runs over
``eval_timeout_s`` is killed, and its run fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.core.eval_gate import GateResult, judge
from agent.io.children.process import EXIT_BAD_INPUT, EXIT_OK, ChildProcess, describe_exit
from agent.services.daemon.children import eval_argv
from agent.services.daemon.publish import RunOutcome, read_eval_losses, serving_adapter
from agent.services.daemon.run_context import RunContext
from agent.services.daemon.runstate import RunState

log = logging.getLogger(__name__)

# How long a timed-out or stopped evaluator gets to exit before it is killed.
EVAL_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class EvalFailed:
    """The evaluation gave no verdict: the run ends with ``outcome``.

    Attributes:
        outcome: how the run ends (``failed``, with why).
        advance_cursor: whether the run's examples count as used (False: the next run
            tries them again).
    """

    outcome: RunOutcome
    advance_cursor: bool


class CandidateEval:
    """The evaluator child of the current run (one at a time).

    Args:
        ctx: the run's collaborators (config, registry, files, launcher).
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.child: ChildProcess | None = None
        self.started = 0.0
        # (version, directory) of the adapter the candidate is compared with
        self.against: tuple[str, str] = ("initial", "")

    def start(self, run: RunState, candidate: Path) -> None:
        """Start evaluating ``candidate`` against the adapter serving now.

        Raises:
            OSError: the evaluator could not be started.
        """
        ctx = self.ctx
        cfg = ctx.config()
        self.against = serving_adapter(ctx.registry, run)
        argv = eval_argv(cfg, candidate, self.against[1], ctx.files, ctx.launcher.python)
        child = ctx.launcher.job(cfg, "eval", argv, ctx.files, f"{run.run_id}-eval")
        child.log_path.unlink(missing_ok=True)
        child.start()
        self.child = child
        self.started = ctx.monotonic()

    def follow(self, run: RunState, candidate: Path) -> GateResult | EvalFailed | None:
        """None while the evaluator runs; once it ended, the gate's verdict or why there is
        none."""
        child = self.child
        assert child is not None
        timeout_s = self.ctx.config().daemon.eval_timeout_s
        code = child.poll()
        if code is None:
            if self.ctx.monotonic() - self.started > timeout_s:
                log.error("evaluation ran over %.0f s; killing it", timeout_s)
                child.stop(EVAL_STOP_GRACE_S)
                code = child.poll()
            if code is None:
                return None
        self.child = None
        if code != EXIT_OK:
            detail = child.last_error_line()
            reason = f"evaluation {describe_exit(code)}" + (f": {detail}" if detail else "")
            # the evaluator refused the held-out data itself: retrying it would fail again
            return EvalFailed(RunOutcome("failed", reason, steps=run.steps_done),
                              advance_cursor=code == EXIT_BAD_INPUT)
        try:
            cand, active, examples = read_eval_losses(child.log_tail(64_000), candidate,
                                                      self.against[1])
        except (TypeError, KeyError, ValueError) as exc:
            return EvalFailed(RunOutcome("failed", f"evaluation output unreadable ({exc})",
                                         steps=run.steps_done), advance_cursor=True)
        cfg = self.ctx.config()
        gate = judge(cand, active, margin=cfg.adapters.eval_margin,
                     mode=cfg.adapters.eval_margin_mode, examples=examples,
                     min_examples=cfg.data.min_heldout_examples)
        log.info("eval gate for run %s: %s", run.run_id, gate.reason)
        return gate

    def stop(self) -> None:
        """Kill a running evaluator (its run stays in "evaluating": redone after a restart)."""
        if self.child is not None:
            self.child.stop(EVAL_STOP_GRACE_S)
            self.child = None

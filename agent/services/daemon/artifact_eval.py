"""The eval gate of a pushed adapter's health window: it must not do worse than what it
replaced on this device's own held-out examples.

The evaluator child (``mobizo-agent eval``, the same one a training run uses:
:func:`agent.services.daemon.children.eval_argv`'s command line) computes the held-out loss
of the pushed adapter and of the one it replaced, on a snapshot of the store's held-out split
written under the push's staging directory (user text: mode 0600, deleted afterwards). A
pushed adapter regresses when its loss is higher; with fewer held-out examples than
``[data] min_heldout_examples`` the comparison is noise and is skipped (a vetted adapter is
still delivered to a device that has no data yet), which the job result says.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.io.children.process import EXIT_OK, ChildProcess, describe_exit, limits_from_training
from agent.services.daemon.artifact_health import Unhealthy
from agent.services.daemon.ports import ExampleStore
from agent.services.daemon.publish import read_eval_losses
from agent.services.daemon.snapshot import remove_snapshot, snapshot_examples

log = logging.getLogger(__name__)


@dataclass
class EvalGate:
    """Compares a pushed adapter with the one it replaced.

    Attributes:
        config: the current config (bundle, backend, data split, limits, eval timeout).
        store: the interaction store (its held-out split).
        python: the interpreter the evaluator runs under.
    """

    config: Callable[[], AgentConfig]
    store: ExampleStore
    python: str
    poll_s: float = 0.2

    def check(self, candidate: Path, against: Path, workdir: Path,
              should_stop: Callable[[], bool]) -> str:
        """A line saying what the gate saw; Unhealthy when the pushed adapter regresses."""
        cfg = self.config()
        snap = snapshot_examples(self.store, workdir, heldout_share=cfg.data.heldout_share,
                                 max_examples=1, max_heldout=cfg.adapters.eval_max_examples)
        try:
            if snap.n_heldout < cfg.data.min_heldout_examples:
                return (f"eval gate not run: {snap.n_heldout} held-out examples "
                        f"(< {cfg.data.min_heldout_examples})")
            cand, active, examples = self._losses(cfg, candidate, against, snap.heldout,
                                                  workdir, should_stop)
        finally:
            remove_snapshot(workdir)
        if not math.isfinite(cand) or (math.isfinite(active) and cand > active):
            raise Unhealthy(f"the eval gate: held-out loss {cand:.4f} is worse than the "
                            f"replaced adapter's {active:.4f} on {examples} examples")
        return f"eval gate: held-out loss {cand:.4f} vs {active:.4f} ({examples} examples)"

    def _losses(self, cfg: AgentConfig, candidate: Path, against: Path, heldout: Path,
                workdir: Path, should_stop: Callable[[], bool]) -> tuple[float, float, int]:
        argv = [self.python, "-m", "agent", "eval", str(candidate), str(against),
                "--bundle", str(cfg.bundle_dir), "--data", str(heldout), "--split", "all",
                "--backend", cfg.training.backend, "--json"]
        if cfg.device.threads:
            argv += ["--threads", str(cfg.device.threads)]
        child = ChildProcess("eval", argv, workdir / "eval.log",
                             limits=limits_from_training(cfg.training), systemd_run=None,
                             job_id=f"push-eval-{os.getpid()}",
                             capped=cfg.training.memory_max_mb > 0,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        child.start()
        deadline = time.monotonic() + cfg.daemon.eval_timeout_s
        while (code := child.poll()) is None:
            if should_stop() or time.monotonic() > deadline:
                child.stop(5.0)
                raise Unhealthy("the eval gate did not finish (canceled, or over "
                                f"{cfg.daemon.eval_timeout_s:.0f} s)")
            time.sleep(self.poll_s)
        if code != EXIT_OK:
            raise Unhealthy(f"the eval gate's evaluator {describe_exit(code)}: "
                            f"{child.last_error_line()}")
        try:
            return read_eval_losses(child.log_tail(64_000), candidate, str(against))
        except (TypeError, KeyError, ValueError) as exc:
            raise Unhealthy(f"the eval gate's output is unreadable ({exc})") from exc

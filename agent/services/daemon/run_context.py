"""What the run code needs from the daemon, as one small frozen set of collaborators.

The run lifecycle (:mod:`agent.services.daemon.lifecycle`) and its parts (bursts, evaluation,
run start) receive a :class:`RunContext` instead of the daemon: a way to read the current
config, the store, the registry, the run files, a clock, a child launcher, a way to tell the
inference service, the status reporter, the policy and the user's wishes. A test builds one
from a real store and registry in ``tmp_path`` and a fake clock, without a daemon.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.core.policy import Decision
from agent.io.children.process import ChildProcess
from agent.services.daemon.children import child_process
from agent.services.daemon.metrics import DaemonMetrics
from agent.services.daemon.ports import ExampleStore, Registry
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.status import StatusReporter
from agent.services.daemon.wishes import UserWishes


@dataclass(frozen=True)
class ChildLauncher:
    """Starts the run's children (trainer, evaluator) with the [training] resource limits.

    Attributes:
        python: the interpreter the children run under.
        systemd_run: a usable ``systemd-run`` for their scopes, or None (plain fork).
    """

    python: str = sys.executable
    systemd_run: str | None = None

    def job(self, cfg: AgentConfig, name: str, argv: list[str], files: RunFiles,
            job_id: str) -> ChildProcess:
        """A child ``name`` running ``argv``, logging to ``<run dir>/<name>.log``."""
        return child_process(cfg, name, argv, files, self.systemd_run, job_id)


@dataclass(frozen=True)
class RunContext:
    """The collaborators of the run lifecycle.

    Attributes:
        config: the current config (changes on reload: read it, don't keep it).
        store: the interaction store.
        registry: the adapter registry.
        files: the run's files under the state directory.
        clock: wall-clock seconds (run and burst times, cooldown).
        launcher: starts the trainer and evaluator children.
        tell_service: asks the inference service to serve a version; its refusal or None.
        reporter: the daemon's status.
        decide: reads the sensors and asks the policy (its argument: a burst runs).
        wishes: the user's pause / train-now wishes.
        on_state_change: told when the state changed (the fleet link republishes it).
        monotonic: seconds for durations (retry pauses, latencies, timeouts).
        metrics: the daemon's Prometheus counters (bursts, steps, eval verdicts).
        release_service: a burst starts: the service lets its program go (one copy of the
            weights on the board); a note if it could not, else None.
    """

    config: Callable[[], AgentConfig]
    store: ExampleStore
    registry: Registry
    files: RunFiles
    clock: Callable[[], float]
    launcher: ChildLauncher
    tell_service: Callable[[str], str | None]
    reporter: StatusReporter
    decide: Callable[[bool], Decision]
    wishes: UserWishes
    on_state_change: Callable[[], None] = field(default=lambda: None)
    monotonic: Callable[[], float] = time.monotonic
    metrics: DaemonMetrics = field(default_factory=DaemonMetrics)
    release_service: Callable[[], str | None] = field(default=lambda: None)

    def state_changed(self) -> None:
        """Tell whoever listens that the state changed."""
        self.on_state_change()

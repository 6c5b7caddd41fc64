"""The daemon's commands (train-now, pause, rollback, ...): one table, run on its main loop.

:meth:`DaemonHandlers.table` is the one list of what the daemon can be asked:
``{name: DaemonCommand(args model, handler)}``. The control socket takes its accepted names
and argument models from it (:mod:`agent.services.daemon.control`); the fleet link's typed
commands call the same handlers (:mod:`agent.services.daemon.fleet_side`); the debug hooks
add theirs only when the daemon runs with ``--debug-hooks``
(:mod:`agent.services.daemon.debug_hooks`).

The control socket and the fleet link run on their own threads and never touch daemon state:
they :meth:`CommandQueue.call` a handler with its typed arguments and wait; the main loop
runs the queued calls at the start of each tick (:meth:`CommandQueue.run_all`). A handler
that fails is answered with its error, never raised into the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from agent.core.command_wire import NoArgs, RollbackArgs
from agent.core.fleet_documents import WireIn
from agent.core.policy import TRAIN_NOW_DEFAULT_SKIP, TrainNow
from agent.errors import MobizoError
from agent.services.daemon.lifecycle import RunLifecycle
from agent.services.daemon.ports import Registry
from agent.services.daemon.status import StatusReporter
from agent.services.daemon.wishes import UserWishes

log = logging.getLogger(__name__)

Reply = dict[str, Any]


@dataclass(frozen=True)
class DaemonCommand:
    """One row of the command table: how its arguments look and who carries it out."""

    args_model: type[BaseModel]
    handler: Callable[[Any], Reply]


CommandTable = dict[str, DaemonCommand]


class TrainNowRequest(WireIn):
    """A manual run: the constraints it skips besides new data and the cooldown."""

    skip: list[str] = Field(default_factory=list, max_length=16,
                            description="policy checks to skip (never thermal or memory)")
    requested_by: str = Field(default="cli", max_length=64, description="who asked (logged)")


class PauseRequest(WireIn):
    """A pause, and why (shown in the status)."""

    reason: str = Field(default="paused by the user", max_length=200)


@dataclass
class Command:
    """A call for the main loop; the caller waits on ``done`` for ``result``."""

    name: str
    run: Callable[[], Reply]
    done: threading.Event = field(default_factory=threading.Event)
    result: Reply | None = None
    error: str | None = None


class CommandQueue:
    """Calls from other threads, waiting for the main loop.

    Args:
        wake: set on submit so the loop runs the call now, not at its next tick.
    """

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._queue: queue.Queue[Command] = queue.Queue()

    def call(self, name: str, run: Callable[[], Reply], timeout: float = 30.0) -> Command:
        """Queue ``run`` for the main loop and wait for it (``name`` is for logs)."""
        cmd = Command(name, run)
        self._queue.put(cmd)
        self.wake.set()
        if not cmd.done.wait(timeout):
            cmd.error = "the daemon's main loop did not answer in time (busy or hung)"
        return cmd

    def submit(self, name: str, command: DaemonCommand, args: BaseModel,
               timeout: float = 30.0) -> Command:
        """Queue one table command with its validated arguments and wait for it."""
        return self.call(name, lambda: command.handler(args), timeout)

    def run_all(self) -> None:
        """Run every queued call (on the main loop)."""
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                cmd.result = cmd.run()
            except (MobizoError, ValueError) as exc:
                cmd.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - answered, logged, never fatal
                log.exception("command %s failed", cmd.name)
                cmd.error = f"internal error: {exc}"
            finally:
                cmd.done.set()


class DaemonHandlers:
    """The daemon's side of every command (main loop only).

    Args:
        wishes: the user's pause / train-now wishes (changed here).
        runs: the run lifecycle (a pause stops its burst).
        reporter: the status (a resume leaves "paused").
        registry: the adapter registry (rollback).
        tell_service: asks the inference service to serve a version; its refusal or None.
        status_document: the live status for ``status``.
    """

    def __init__(self, *, wishes: UserWishes, runs: RunLifecycle, reporter: StatusReporter,
                 registry: Registry, tell_service: Callable[[str], str | None],
                 status_document: Callable[[], Reply]) -> None:
        self.wishes = wishes
        self.runs = runs
        self.reporter = reporter
        self.registry = registry
        self.tell_service = tell_service
        self.status_document = status_document

    def table(self) -> CommandTable:
        """The command table: ``{name: (args model, handler)}``."""
        return {
            "status": DaemonCommand(NoArgs, self.status),
            "train-now": DaemonCommand(TrainNowRequest, self.train_now),
            "pause": DaemonCommand(PauseRequest, self.pause),
            "resume": DaemonCommand(NoArgs, self.resume),
            "rollback": DaemonCommand(RollbackArgs, self.rollback),
        }

    def status(self, args: NoArgs) -> Reply:
        """The status document (answered on the loop: it also shows the loop lives)."""
        return self.status_document()

    def train_now(self, args: TrainNowRequest) -> Reply:
        """Run now, skipping ``args.skip`` plus new data and the cooldown; ends a pause."""
        skip = set(args.skip) | TRAIN_NOW_DEFAULT_SKIP
        self.wishes.manual = TrainNow(skip=frozenset(skip), requested_by=args.requested_by)
        self.runs.data_short_at = None
        self.wishes.paused = None
        return {"message": "training requested; skipping " + ", ".join(sorted(skip))
                + " (thermal and memory always apply)"}

    def pause(self, args: PauseRequest) -> Reply:
        """Pause training; a running burst checkpoints and stops."""
        reason = args.reason or "paused by the user"
        self.wishes.paused = reason
        if self.runs.bursts.child is not None:
            self.runs.bursts.stop_burst(reason)
        return {"message": f"paused: {reason}"}

    def resume(self, args: NoArgs) -> Reply:
        """End a pause."""
        was = self.wishes.paused
        self.wishes.paused = None
        if self.reporter.status.state == "paused":
            self.reporter.set("waiting", "resumed")
        return {"message": "resumed" if was else "was not paused"}

    def rollback(self, args: RollbackArgs) -> Reply:
        """Activate ``args.version`` (None: the previous one) and hand it to the service."""
        # A rollback while a run trains is fine: the run keeps its own initial adapter.
        version = args.version
        if isinstance(version, int):
            version = f"v{version:04d}"
        to = self.registry.rollback(version)
        refused = self.tell_service(to)
        self.reporter.update(active_adapter=to)
        return {"active_version": to, "service": refused or "ok"}

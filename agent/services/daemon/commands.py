"""Commands for the daemon (train-now, pause, rollback, ...), run on its main loop.

The control socket and the fleet link run on their own threads; they never touch daemon
state. They :meth:`CommandQueue.submit` a :class:`Command` and wait; the main loop drains the
queue at the start of each tick (:meth:`CommandQueue.run_all`) and answers each command with
:func:`handle_command`. A command that fails is answered with its error, never raised into
the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.policy import TRAIN_NOW_DEFAULT_SKIP, TrainNow
from agent.errors import MobizoError

if TYPE_CHECKING:
    from agent.services.daemon.loop import Daemon

log = logging.getLogger(__name__)


@dataclass
class Command:
    """A request for the main loop; the caller waits on ``done`` for ``result``."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: str | None = None


class CommandQueue:
    """Commands from other threads, waiting for the main loop.

    Args:
        wake: set on submit so the loop runs the command now, not at its next tick.
    """

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._queue: queue.Queue[Command] = queue.Queue()

    def submit(self, name: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0) -> Command:
        """Queue a command for the main loop and wait for it to be handled."""
        cmd = Command(name, dict(args or {}))
        self._queue.put(cmd)
        self.wake.set()
        if not cmd.done.wait(timeout):
            cmd.error = "the daemon's main loop did not answer in time (busy or hung)"
        return cmd

    def run_all(self, handle: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        """Answer every queued command with ``handle`` (on the main loop)."""
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                cmd.result = handle(cmd.name, cmd.args)
            except (MobizoError, ValueError) as exc:
                cmd.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - answered, logged, never fatal
                log.exception("command %s failed", cmd.name)
                cmd.error = f"internal error: {exc}"
            finally:
                cmd.done.set()


def handle_command(daemon: Daemon, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Carry out command ``name`` on ``daemon`` (main loop only); its reply.

    Raises:
        ValueError: an unknown command, or a debug command while debug hooks are off.
        MobizoError: the command could not be carried out (e.g. nothing to roll back to).
    """
    runs = daemon.runs
    if name == "train-now":
        skip = set(args.get("skip") or ()) | TRAIN_NOW_DEFAULT_SKIP
        daemon.manual = TrainNow(skip=frozenset(skip),
                                 requested_by=str(args.get("requested_by", "cli")))
        runs.data_short_at = None
        if daemon.paused is not None:
            daemon.paused = None
        return {"message": "training requested; skipping " + ", ".join(sorted(skip))
                + " (thermal and memory always apply)"}
    if name == "pause":
        reason = str(args.get("reason") or "paused by the user")
        daemon.paused = reason
        if runs.bursts.child is not None:
            runs.bursts.stop_burst(reason)
        return {"message": f"paused: {reason}"}
    if name == "resume":
        was = daemon.paused
        daemon.paused = None
        if daemon.status.state == "paused":
            daemon.reporter.set("waiting", "resumed")
        return {"message": "resumed" if was else "was not paused"}
    if name == "rollback":
        # A rollback while a run trains is fine: the run keeps its own initial adapter.
        version = args.get("version")
        to = daemon.registry.rollback(str(version) if version is not None else None)
        refused = daemon.tell_service(to)
        daemon.reporter.update(active_adapter=to)
        return {"active_version": to, "service": refused or "ok"}
    if name == "status":
        return daemon.status_document()
    if name == "apply-config":  # internal: a validated fleet desired-config
        daemon.apply_config(args["loaded"], set(args.get("changed") or ()))
        return {"message": "applied"}
    if name == "debug-publish-delay":
        if not daemon.debug_hooks:
            raise ValueError("debug commands are off (start the daemon with --debug-hooks)")
        daemon.publish_delay = (str(args.get("stage", "staged")),
                                float(args.get("seconds", 30.0)))
        return {"message": f"publishing will sleep at {daemon.publish_delay[0]}"}
    if name == "debug-hang":
        if not daemon.debug_hooks:
            raise ValueError("debug commands are off (start the daemon with --debug-hooks)")
        daemon.hang_s = float(args.get("seconds", 5.0))
        return {"message": f"main loop will hang for {daemon.hang_s} s"}
    raise ValueError(f"unknown command {name!r}")

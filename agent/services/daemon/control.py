"""The daemon's side of the control socket: requests from the table, run on the main loop.

The transport (unix socket, JSON lines, long paths) is :mod:`agent.io.control_socket`. Here a
request's ``cmd`` is looked up in the daemon's command table
(:meth:`agent.services.daemon.commands.DaemonHandlers.table`, plus the debug rows with
``--debug-hooks``), its ``args`` validated against that row's model, and the handler run on
the main loop; the caller waits for the reply. ``status`` is answered the same way, which also
shows whether the loop lives::

    {"cmd": "status"}                                   → {"ok": true, "result": {...}}
    {"cmd": "train-now", "args": {"skip": ["power"]}}   → {"ok": true, "result": {"message": ...}}
    {"cmd": "pause", "args": {"reason": "demo"}}        {"cmd": "resume"}
    {"cmd": "rollback", "args": {"version": "v0002"}}   (version omitted: the previous one)
    {"cmd": "debug-hang", "args": {"seconds": 5}}       (only with ``run --debug-hooks``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ValidationError

from agent.core.policy import SKIPPABLE
from agent.io.control_socket import (
    ControlReply,
    ControlRequest,
    ControlServer,
    bad_request,
)
from agent.services.daemon.commands import Command, CommandTable, DaemonCommand

__all__ = ["SOCKET_NAME", "ControlCommands", "control_server", "parse_ignore"]

SOCKET_NAME = "control.sock"
# CLI spelling of the skippable constraints (``--ignore power,idle,hours,min-examples``).
IGNORE_NAMES = {name.replace("_", "-"): name for name in SKIPPABLE}


def parse_ignore(text: str) -> list[str]:
    """``"power,idle,min-examples"`` → policy names; ValueError names what is unknown."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    out, bad = [], []
    for name in names:
        key = IGNORE_NAMES.get(name) or (name if name in SKIPPABLE else None)
        if key is None:
            bad.append(name)
        else:
            out.append(key)
    if bad:
        raise ValueError(f"cannot ignore {', '.join(bad)}: choose from "
                         f"{', '.join(sorted(IGNORE_NAMES))} (thermal and memory always apply)")
    return out


class Submitter(Protocol):
    """Runs a table command on the main loop and waits (:class:`CommandQueue`)."""

    def submit(self, name: str, command: DaemonCommand, args: BaseModel,
               timeout: float = 30.0) -> Command: ...


class ControlCommands:
    """Answers control requests from the command table.

    Args:
        table: the commands the socket accepts (names, argument models, handlers).
        loop: runs a command on the main loop.
        timeout_s: how long a request waits for the main loop.
    """

    def __init__(self, table: CommandTable, loop: Submitter, timeout_s: float = 30.0) -> None:
        self.table = table
        self.loop = loop
        self.timeout_s = timeout_s

    def handle(self, req: ControlRequest) -> ControlReply:
        """Validate ``req`` against its table row, run it, answer (never raises)."""
        command = self.table.get(req.cmd)
        if command is None:
            known = ", ".join(sorted(self.table))
            return ControlReply(ok=False, error=f"bad request: cmd: unknown command "
                                f"{req.cmd!r}; known: {known}")
        try:
            args = command.args_model.model_validate(req.args)
        except ValidationError as exc:
            return bad_request(exc)
        cmd = self.loop.submit(req.cmd, command, args, timeout=self.timeout_s)
        if cmd.error is not None:
            return ControlReply(ok=False, error=cmd.error)
        return ControlReply(ok=True, result=cmd.result)


def control_server(table: CommandTable, loop: Submitter, state_dir: Path,
                   timeout_s: float = 30.0) -> ControlServer:
    """The control socket ``<state_dir>/control.sock`` serving ``table`` (not yet started)."""
    commands = ControlCommands(table, loop, timeout_s)
    return ControlServer(commands.handle, state_dir / SOCKET_NAME, timeout_s)

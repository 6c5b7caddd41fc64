"""Local control of the daemon: a unix socket speaking JSON lines, and the fleet link's side.

``<state_dir>/control.sock`` (mode 0660: the agent's user and group only) takes one JSON object
per line and answers one per line::

    {"cmd": "status"}                                   → {"ok": true, "result": {...}}
    {"cmd": "train-now", "args": {"skip": ["power"]}}   → {"ok": true, "result": {"message": ...}}
    {"cmd": "pause", "args": {"reason": "demo"}}        {"cmd": "resume"}
    {"cmd": "rollback", "args": {"version": "v0002"}}   (version omitted: the previous one)
    {"cmd": "debug-hang", "args": {"seconds": 5}}       (only with ``run --debug-hooks``)
    {"cmd": "debug-publish-delay", "args": {"stage": "staged", "seconds": 30}}   (idem)

A malformed line gets ``{"ok": false, "error": ...}``, never a crash. Commands are executed by
the daemon's main loop (:meth:`Daemon.submit`), so nothing here touches daemon state from
another thread; ``status`` is answered the same way, which also shows whether the loop lives.

:class:`DaemonCommands` implements the fleet link's ``CommandHandler`` / ``StateSource`` /
``DesiredConfigSink`` protocols (agent/core/commands.py, agent/core/fleet_documents.py) over
the same daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.commands import (
    Ack,
    CommandFailed,
    CommandRejected,
    JobContext,
    PurgeDataOutput,
    RollbackOutput,
    TrainNowArgs,
    TrainNowOutput,
)
from agent.core.fleet_documents import (
    AdapterInfo,
    ApplyResult,
    BurstInfo,
    ConstraintsInfo,
    StateDocument,
)
from agent.core.policy import SKIPPABLE
from agent.errors import MobizoError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024

CommandName = Literal["status", "train-now", "pause", "resume", "rollback", "debug-hang",
                      "debug-publish-delay"]
# CLI spelling of the skippable constraints (``--ignore power,idle,hours,min-examples``).
IGNORE_NAMES = {name.replace("_", "-"): name for name in SKIPPABLE}


class ControlRequest(BaseModel):
    """One line from a control client."""

    model_config = ConfigDict(extra="forbid")

    cmd: CommandName
    args: dict[str, Any] = Field(default_factory=dict)


class ControlReply(BaseModel):
    """One line back."""

    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


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


# sun_path holds 108 bytes (unix(7)); deeper state directories are reached through
# /proc/self/fd/<dir fd>/<name>, which the kernel resolves without the length limit.
_SUN_PATH_MAX = 100


@contextlib.contextmanager
def _socket_address(path: Path) -> Any:
    """A bindable/connectable address for ``path``, however long its directory."""
    text = str(path)
    if len(text.encode()) < _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    """Serves the control socket on a thread of its own until :meth:`stop`.

    Args:
        daemon: the daemon (anything with ``submit(name, args, timeout) -> Command``).
        path: the socket path.
        timeout_s: how long a request waits for the main loop.
    """

    def __init__(self, daemon: Any, path: Path, timeout_s: float = 30.0) -> None:
        self.daemon = daemon
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a killed daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with _socket_address(self.path) as address:
            sock.bind(address)
        os.chmod(self.path, 0o660)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # One short-lived thread per client: a slow client never blocks the others.
            threading.Thread(target=self._client, args=(conn,), name="control-client",
                             daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.timeout_s + 5)
            buf = b""
            try:
                while not self._stop.is_set():
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_LINE and b"\n" not in buf:
                        conn.sendall(_line(ControlReply(ok=False, error="request too long")))
                        return
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            conn.sendall(_line(self.handle_line(line)))
            except OSError:
                return

    def handle_line(self, line: bytes) -> ControlReply:
        """Parse, run and answer one request line (never raises)."""
        try:
            req = ControlRequest.model_validate_json(line)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                                 for e in exc.errors())
            return ControlReply(ok=False, error=f"bad request: {problems}")
        cmd = self.daemon.submit(req.cmd, req.args, timeout=self.timeout_s)
        if cmd.error is not None:
            return ControlReply(ok=False, error=cmd.error)
        return ControlReply(ok=True, result=cmd.result)


def _line(reply: ControlReply) -> bytes:
    return reply.model_dump_json(exclude_none=True).encode() + b"\n"


def control_request(path: Path, cmd: str, args: dict[str, Any] | None = None,
                    timeout: float = 35.0) -> ControlReply:
    """Client side: send one command, return the reply.

    Raises:
        MobizoError: the daemon is not running there (no socket, refused) or did not answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with _socket_address(Path(path)) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise MobizoError(
                f"the agent daemon is not running with control socket {path} ({exc.strerror}); "
                "start it with `mobizo-agent run` or `systemctl start mobizo-agent`, or pass "
                "the right --state-dir") from None
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise MobizoError(f"the daemon did not answer within {timeout:.0f} s") from None
    finally:
        sock.close()
    if not buf.strip():
        raise MobizoError("the daemon closed the control connection without answering")
    return ControlReply.model_validate_json(buf.split(b"\n", 1)[0])


# ---------------------------------------------------------------------------------------------
# The fleet link's side.


class DaemonCommands:
    """CommandHandler + StateSource + DesiredConfigSink over the running daemon.

    Args:
        daemon: the :class:`agent.services.daemon.loop.Daemon`.
        app: the composition root (for desired-config: it owns config loading).
        store: the interaction store (purge).
        run_timeout_s: longest a fleet train-now waits for its run to end.
    """

    def __init__(self, daemon: Any, app: Any, store: Any, run_timeout_s: float = 3600.0) -> None:
        self.daemon = daemon
        self.app = app
        self.store = store
        self.run_timeout_s = run_timeout_s

    def _submit(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        cmd = self.daemon.submit(name, args or {})
        if cmd.error is not None:
            raise CommandFailed(cmd.error)
        return cmd.result or {}

    # --- CommandHandler ---------------------------------------------------------------------
    def train_now(self, args: TrainNowArgs, job: JobContext) -> TrainNowOutput:
        if self.daemon.paused is not None:
            raise CommandRejected(f"the agent is paused ({self.daemon.paused}); resume first")
        skip = sorted(SKIPPABLE) if args.ignore_constraints else []
        self._submit("train-now", {"skip": skip, "requested_by": "fleet"})
        job.report(0.0, "training requested")
        outcome = self.daemon.wait_for_run(self.run_timeout_s)
        if outcome is None:
            raise CommandFailed(f"no run finished within {self.run_timeout_s:.0f} s")
        return TrainNowOutput(outcome=outcome.outcome, steps=outcome.steps, loss=outcome.loss,
                              adapter_version=outcome.adapter_version)

    def pause(self, reason: str) -> Ack:
        return Ack(message=self._submit("pause", {"reason": reason}).get("message", ""))

    def resume(self) -> Ack:
        return Ack(message=self._submit("resume").get("message", ""))

    def rollback(self, version: int | str | None, job: JobContext) -> RollbackOutput:
        if isinstance(version, int):
            version = f"v{version:04d}"
        result = self._submit("rollback", {"version": version})
        return RollbackOutput(active_version=result.get("active_version"))

    def status(self) -> StateDocument:
        return self.current_state()

    def purge_data(self, before: datetime | None, job: JobContext) -> PurgeDataOutput:
        return PurgeDataOutput(deleted=self.store.purge(before.timestamp() if before else None))

    def set_log_level(self, level: str) -> Ack:
        logging.getLogger().setLevel(level)
        return Ack(message=f"log level {level}")

    # --- StateSource ------------------------------------------------------------------------
    def current_state(self) -> StateDocument:
        """Built from the daemon's last status (read-only; never waits for the loop)."""
        s = self.daemon.status
        last = s.last_burst
        snap = self.daemon.last_snapshot
        constraints = ConstraintsInfo()
        if snap is not None:
            power = snap.power
            constraints = ConstraintsInfo(
                power="charging" if power.charging and power.source != "mains" else power.source,
                battery_pct=power.battery_pct,
                thermal=None if snap.max_temp_c is None else f"{snap.max_temp_c:.0f} C",
                idle=None if snap.user_idle_s is None else snap.user_idle_s > 0)
        evals: dict[str, float] = {}
        if last is not None:
            for key in ("heldout_loss_candidate", "heldout_loss_active"):
                value = getattr(last, key)
                if value is not None:
                    evals[key] = value
        counts = {}
        with contextlib.suppress(Exception):
            raw = self.store.counts()
            counts = {k: int(v) for k, v in raw.items() if isinstance(v, int)}
        return StateDocument(
            state=s.state, reason=s.reason,
            adapter=AdapterInfo(version=s.active_adapter, eval_metrics=evals),
            last_burst=None if last is None else BurstInfo(
                steps=last.steps, loss=last.train_loss_end,
                duration_s=last.ended_at - last.started_at, outcome=last.outcome,
                finished_at=last.ended_at),
            constraints=constraints, store_counts=counts,
            versions={"agent": s.version})

    # --- DesiredConfigSink --------------------------------------------------------------------
    def apply(self, version: int, document: dict[str, Any]) -> ApplyResult:
        try:
            self.app.apply_desired_config(version, document)
        except MobizoError as exc:
            return ApplyResult(errors=[str(exc)])
        return ApplyResult(applied_version=version)

"""The control socket's transport: a unix socket speaking JSON lines, server and client.

One JSON object per line in, one per line out::

    {"cmd": "status"}                                   → {"ok": true, "result": {...}}
    {"cmd": "pause", "args": {"reason": "demo"}}        → {"ok": true, "result": {"message": ...}}

A malformed line gets ``{"ok": false, "error": "bad request: ..."}``, never a crash. What a
command means is not known here: :class:`ControlServer` hands each parsed
:class:`ControlRequest` to a ``handle`` callable (the daemon's adapter,
:mod:`agent.services.daemon.control`) on the client's own thread.

``sun_path`` holds 108 bytes (unix(7)); a socket in a deeper directory is reached through
``/proc/self/fd/<dir fd>/<name>``, which the kernel resolves without that limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import MobizoError

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
_SUN_PATH_MAX = 100


class ControlRequest(BaseModel):
    """One line from a control client."""

    model_config = ConfigDict(extra="forbid")

    cmd: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class ControlReply(BaseModel):
    """One line back."""

    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


def bad_request(exc: ValidationError) -> ControlReply:
    """The reply to a request that did not validate, naming each bad field."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                         for e in exc.errors())
    return ControlReply(ok=False, error=f"bad request: {problems}")


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
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
        handle: answers one valid request (called on the client's thread; must not raise).
        path: the socket path (created mode 0660: the agent's user and group only).
        timeout_s: how long a request may take; a client connection idles out after it.
    """

    def __init__(self, handle: Callable[[ControlRequest], ControlReply], path: Path,
                 timeout_s: float = 30.0) -> None:
        self.handle = handle
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (replacing a socket a killed daemon left) and serve on a thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a killed daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with socket_address(self.path) as address:
            sock.bind(address)
        os.chmod(self.path, 0o660)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def stop(self) -> None:
        """Stop serving and remove the socket file."""
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
        """Parse and answer one request line (never raises)."""
        try:
            req = ControlRequest.model_validate_json(line)
        except ValidationError as exc:
            return bad_request(exc)
        try:
            return self.handle(req)
        except Exception as exc:  # noqa: BLE001 - a client must get an answer, never a hang
            log.exception("control command %s failed", req.cmd)
            return ControlReply(ok=False, error=f"internal error: {exc}")


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
            with socket_address(Path(path)) as address:
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

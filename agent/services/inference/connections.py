"""Connections of the local API: one selector thread, two fixed pools of handler threads.

A thread per connection let a few idle clients exhaust the unit's ``TasksMax``, and a client
that never sent its request held its thread forever. Here:

- **one selector thread** accepts and reads request heads (request line + headers) of every
  connection without blocking; an idle or stalled client costs a socket and a small buffer,
  no thread. A head must arrive within ``read_timeout_s`` (else 408 and close) and fit in
  ``max_head_bytes`` (else 431). Above ``max_connections`` the connection that has waited
  longest without a complete head is dropped, so stalled clients can never lock a new one out;
- a complete ``GET`` goes to the **fast lane** (``fast_threads`` threads: ``/health``,
  ``/v1/models``), everything else to the **request lane** (``handler_threads``). A slow
  generation can therefore never delay ``/health``. A full lane answers 503 at once;
- in a handler thread the socket has a deadline: the body must arrive within
  ``read_timeout_s`` of the head, and each write gets ``write_timeout_s``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# (socket, client address, bytes read so far, whether it came over the unix socket)
Accepted = tuple[socket.socket, Any, bytes, bool]
Serve = Callable[[socket.socket, Any, bytes, bool, float], None]


@dataclass
class _Pending:
    sock: socket.socket
    address: Any
    unix: bool
    since: float
    buf: bytearray = field(default_factory=bytearray)


def _quick_reply(sock: socket.socket, status: str, message: str,
                 extra: str = "") -> None:
    """Best effort, never blocking: a short JSON error, then close."""
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    head = (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.send(head + body, socket.MSG_DONTWAIT)
    with contextlib.suppress(OSError):
        sock.close()


class ConnectionFront:
    """Listening sockets, the selector thread and the handler pools.

    Args:
        serve: handles one request: ``(sock, address, head bytes, unix, body deadline)``; it
            owns the socket from then on (closes it).
        handler_threads: threads of the request lane (POSTs).
        fast_threads: threads of the fast lane (GETs).
        max_connections: connections waiting for their head; above it the oldest is dropped.
        read_timeout_s: a head must arrive this soon after connect, a body this soon after it.
        max_head_bytes: request line + headers larger than this get 431.
        clock: monotonic seconds.
    """

    def __init__(self, serve: Serve, *, handler_threads: int, fast_threads: int = 2,
                 max_connections: int = 128, read_timeout_s: float = 10.0,
                 max_head_bytes: int = 16 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._serve = serve
        self.max_connections, self.read_timeout_s = max_connections, read_timeout_s
        self.max_head_bytes, self._clock = max_head_bytes, clock
        self._sel = selectors.DefaultSelector()
        self._listeners: list[tuple[socket.socket, bool]] = []
        self._pending: dict[int, _Pending] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._lanes = {
            "fast": (queue.Queue[Accepted | None](maxsize=max_connections), fast_threads),
            "request": (queue.Queue[Accepted | None](maxsize=handler_threads), handler_threads),
        }
        self._threads: list[threading.Thread] = []
        self.dropped = 0  # connections closed for the limit, a timeout or a full lane

    # --- listening ---------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); the bound address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._listen(sock, unix=False)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def listen_unix(self, path: Path, mode: int = 0o660) -> None:
        """Listen on a unix socket at ``path`` (a stale one is replaced), with ``mode``."""
        if path.exists():
            path.unlink()  # a stale socket from a killed run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, mode)
        self._listen(sock, unix=True)

    def _listen(self, sock: socket.socket, unix: bool) -> None:
        sock.listen(min(self.max_connections, socket.SOMAXCONN))
        sock.setblocking(False)
        self._listeners.append((sock, unix))

    # --- running -----------------------------------------------------------------------

    def start(self) -> None:
        for sock, unix in self._listeners:
            self._sel.register(sock, selectors.EVENT_READ, ("listen", unix))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", False))
        for lane, (q, count) in self._lanes.items():
            for k in range(count):
                t = threading.Thread(target=self._work, args=(q,), name=f"http-{lane}-{k}",
                                     daemon=True)
                t.start()
                self._threads.append(t)
        t = threading.Thread(target=self._loop, name="http-accept", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close waiting connections, let handlers finish (up to ``timeout``)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for q, count in self._lanes.values():
            for _ in range(count):
                with contextlib.suppress(queue.Full):
                    q.put(None, timeout=0.1)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for sock, _ in self._listeners:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(timeout=self._next_timeout()):
                    kind, unix = key.data
                    if kind == "listen":
                        self._accept(key.fileobj, unix)  # type: ignore[arg-type]
                    elif kind == "conn":
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        finally:
            for p in list(self._pending.values()):
                self._forget(p)
                p.sock.close()
            self._sel.close()

    def _next_timeout(self) -> float:
        if not self._pending:
            return 1.0
        oldest = min(p.since for p in self._pending.values())
        return max(0.01, min(1.0, oldest + self.read_timeout_s - self._clock()))

    def _accept(self, listener: socket.socket, unix: bool) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: free a descriptor, else spin
                log.warning("accept failed: %s", exc)
                if self._pending:
                    self._drop(min(self._pending.values(), key=lambda p: p.since),
                               "503 Service Unavailable", "out of file descriptors")
                else:
                    time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(self._pending) >= self.max_connections:
                oldest = min(self._pending.values(), key=lambda p: p.since)
                self._drop(oldest, "408 Request Timeout",
                           "too many connections waiting; this one waited longest")
            pending = _Pending(sock, address, unix, self._clock())
            self._pending[sock.fileno()] = pending
            self._sel.register(sock, selectors.EVENT_READ, ("conn", unix))

    def _read(self, sock: socket.socket) -> None:
        pending = self._pending.get(sock.fileno())
        if pending is None:
            return
        try:
            data = sock.recv(64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before sending a request
            self._forget(pending)
            sock.close()
            return
        pending.buf += data
        if b"\r\n\r\n" not in pending.buf and b"\n\n" not in pending.buf:
            if len(pending.buf) > self.max_head_bytes:
                self._drop(pending, "431 Request Header Fields Too Large",
                           f"request head over {self.max_head_bytes} bytes")
            return
        self._forget(pending)
        sock.setblocking(True)
        lane = "fast" if bytes(pending.buf[:4]) == b"GET " else "request"
        q, _ = self._lanes[lane]
        try:
            q.put_nowait((sock, pending.address, bytes(pending.buf), pending.unix))
        except queue.Full:
            self.dropped += 1
            _quick_reply(sock, "503 Service Unavailable",
                         "the service is busy (all request handlers taken); retry shortly",
                         "Retry-After: 1\r\n")

    def _expire(self) -> None:
        now = self._clock()
        for p in [p for p in self._pending.values() if now - p.since > self.read_timeout_s]:
            self._drop(p, "408 Request Timeout",
                       f"no complete request within {self.read_timeout_s:g} s")

    def _drop(self, pending: _Pending, status: str, message: str) -> None:
        self.dropped += 1
        self._forget(pending)
        _quick_reply(pending.sock, status, message)

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(pending.sock)

    def _work(self, q: queue.Queue[Accepted | None]) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            sock, address, head, unix = item
            try:
                self._serve(sock, address, head, unix, self._clock() + self.read_timeout_s)
            except Exception:  # a bug must not take a pool thread with it
                log.exception("error serving a connection")
                with contextlib.suppress(OSError):
                    sock.close()


class SocketWriter(io.BufferedIOBase):
    """Writes that send everything (``sendall``) or raise: a raw socket file may write part."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)


class DeadlineReader(io.RawIOBase):
    """A request's bytes: what the selector read first, then the socket, until a deadline."""

    def __init__(self, prefix: bytes, sock: socket.socket, deadline: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._prefix, self._sock, self._deadline, self._clock = prefix, sock, deadline, clock
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            self.consumed += n
            return n
        left = self._deadline - self._clock()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        n = self._sock.recv_into(view)
        self.consumed += n
        return n

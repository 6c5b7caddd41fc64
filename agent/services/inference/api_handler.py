"""The plumbing under the API's routes: one request on a socket, its checks, JSON in and out.

:func:`serve_connection` runs a handler class on a connection the selector
(:mod:`agent.services.inference.connections`) read the head of; :class:`ApiHandler` reads the
body against a deadline, writes with a timeout, and admits a request only past the checks of
:mod:`agent.services.inference.guard`. The routes are in :mod:`agent.services.inference.server`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from agent.services.inference.connections import DeadlineReader, SocketWriter
from agent.services.inference.guard import (
    HttpError,
    RateWindow,
    check_host,
    check_json_type,
    content_length,
    token_ok,
)
from agent.services.inference.protocol import error_body, refused_fields
from agent.services.inference.settings import ServeConfig

if TYPE_CHECKING:
    from agent.io.store import InteractionStore
    from agent.services.inference.bundle_switch import ServingGate
    from agent.services.inference.generation import Generator, TextCodec
    from agent.services.inference.hotswap import AdapterSlot
    from agent.services.inference.metrics import ServiceMetrics
    from agent.services.inference.residency import ReleasableProgram
    from agent.services.inference.worker import GenerationWorker

log = logging.getLogger("agent.services.inference.server")


class ServedApp(Protocol):
    """What a request handler needs of the service (``InferenceService`` is one).

    Typed here, so this module does not import the service that builds it (no import circle).
    """

    config: ServeConfig
    model_name: str
    bundle_id: str
    started_at: int
    last_request_at: float | None
    slot: AdapterSlot
    store: InteractionStore | None
    codec: TextCodec
    generator: Generator
    worker: GenerationWorker
    program: ReleasableProgram
    metrics: ServiceMetrics
    gate: ServingGate

    def health(self) -> dict[str, Any]: ...

    def retry_after_s(self) -> int: ...


@dataclass
class ApiContext:
    """What every request is checked against: the service, its token, its Host names."""

    app: ServedApp
    token: str | None  # None: no token required (a loopback listen, by config)
    allowed_hosts: frozenset[str]
    corrections: RateWindow


@dataclass
class _Request:
    sock: socket.socket
    head: bytes
    unix: bool
    deadline: float


def serve_connection(handler: type[BaseHTTPRequestHandler], ctx: ApiContext,
                     sock: socket.socket, address: Any, head: bytes, unix: bool,
                     deadline: float) -> None:
    """Answer the one request on ``sock`` (HTTP/1.0) with ``handler``, then close it."""
    try:
        request = _Request(sock, head, unix, deadline)
        handler(request, address if not unix else "unix", ctx)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()


class ApiHandler(BaseHTTPRequestHandler):
    """The plumbing of one request: socket, checks, JSON in and out; the routes subclass it.

    ``self.server`` is the :class:`ApiContext`.
    """

    server_version = "mobizo-agent"
    protocol_version = "HTTP/1.0"  # one request per connection: simple and stream-friendly

    @property
    def app(self) -> ServedApp:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    # --- plumbing -------------------------------------------------------------------------

    def setup(self) -> None:
        req: _Request = self.request  # type: ignore[assignment]
        self.connection = req.sock
        self.unix = req.unix
        self.connection.settimeout(self.app.config.write_timeout_s)
        self._reader = DeadlineReader(req.head, req.sock, req.deadline)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = SocketWriter(req.sock)
        self._unread = 0  # declared body bytes not read (drained before close)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.close()
        if self._unread > 0:  # let the client read our refusal instead of a reset
            self._drain(min(self._unread, 4 << 20))
        self.rfile.close()

    def _drain(self, limit: int, seconds: float = 0.5) -> None:
        """Read and drop what the client still sends (at most ``limit`` bytes, ``seconds``)."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while limit > 0 and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(min(limit, 64 * 1024))
                if not chunk:
                    return
                limit -= len(chunk)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _admit(self, path: str) -> bool:
        """Host, token and content type (guard.py); whether the client holds the token."""
        ctx: ApiContext = self.server  # type: ignore[assignment]
        if self.command == "POST":
            declared = self.headers.get_all("Content-Length") or []
            self._unread = int(declared[0]) if len(declared) == 1 and \
                declared[0].strip().isascii() and declared[0].strip().isdigit() else 0
        if not self.unix:
            hosts = self.headers.get_all("Host") or []
            if len(hosts) > 1:
                raise HttpError(400, "more than one Host header")
            check_host(hosts[0] if hosts else None, ctx.allowed_hosts)
        authorized = self.unix or token_ok(self.headers.get("Authorization"), ctx.token)
        if not authorized and path != "/health":
            raise HttpError(401, "send 'Authorization: Bearer <token>' (the token is in the "
                            "file [inference] token_file names; or use the unix socket)",
                            "authentication_error", headers={"WWW-Authenticate": "Bearer"})
        if self.command == "POST":
            check_json_type(self.headers.get("Content-Type"))
        return authorized

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        handler = routes.get(path)
        try:
            self.authorized = self._admit(path)
            if handler is None:
                raise HttpError(404, f"no route {self.command} {path}", "not_found")
            handler()
        except HttpError as err:
            self._send_json(err.status, error_body(err.message, err.kind, **err.extra),
                            err.headers)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away
        except TimeoutError:  # a stalled client: answer if it still listens, then let go
            with contextlib.suppress(OSError):
                self.connection.settimeout(0.5)
                self._send_json(408, error_body("the request did not arrive in time",
                                                "timeout"))
        except Exception as exc:  # a bug must not kill the connection thread silently
            log.exception("error handling %s %s", self.command, path)
            with contextlib.suppress(OSError):
                self._send_json(500, error_body(f"internal error: {exc}", "server_error"))

    def _body(self) -> Any:
        length = content_length(self.headers.get_all("Content-Length"),
                                self.headers.get("Transfer-Encoding"),
                                self.app.config.max_body_bytes)
        raw = self.rfile.read(length)
        self._unread = 0
        self.connection.settimeout(self.app.config.write_timeout_s)  # reading set its own
        if len(raw) < length:
            raise HttpError(400, f"the body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"malformed JSON body: {exc}") from exc

    @staticmethod
    def _validated(model: Any, body: Any) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            refused = refused_fields(exc.errors())  # unknown fields: 400 naming each
            if refused:
                names = ", ".join(repr(f) for f, _ in refused)
                why = "; ".join(f"{f}: {reason}" for f, reason in refused)
                raise HttpError(400, f"unsupported field{'s' if len(refused) > 1 else ''} "
                                f"{names}: {why}", "invalid_request_error",
                                param=refused[0][0],
                                details=[{"field": f, "problem": r} for f, r in refused]
                                ) from exc
            problems = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)",
                         "problem": e["msg"]} for e in exc.errors()]
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
            raise HttpError(422, f"invalid request: {summary}", details=problems) from exc

    # --- routes ---------------------------------------------------------------------------

"""A tiny HTTP server for one read-only page: a process's Prometheus ``GET /metrics``.

The daemon has no HTTP API (its control channel is a unix socket speaking JSON lines), so
its metrics get this small listener, opt-in (``[daemon] metrics_listen``), on either

- a **unix socket** (mode 0660, like the control socket and the inference service's socket:
  membership of its group is the credential, no token), or
- **TCP**, where every request needs ``Authorization: Bearer <token>``, the local API's token
  (``[inference] token_file``, read at each request, compared in constant time). A web page in
  a local browser cannot read that file, so it cannot read the metrics either, whatever name it
  rebinds to 127.0.0.1. Prometheus sends it with ``authorization: {credentials_file: ...}``.

Stdlib only. One short-lived thread per scrape; a client that stalls is dropped after
``timeout_s``. What the page says is the caller's ``render`` (``prometheus_client``'s
exposition); nothing here knows a metric.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from agent.io.control_socket import socket_address
from agent.io.token_file import TokenFileError

log = logging.getLogger(__name__)

#: What ``render`` returns: the page's bytes and its Content-Type.
Page = tuple[bytes, str]

#: The Prometheus text format every scraper reads (Prometheus 2 and 3, node_exporter's
#: textfile collector, VictoriaMetrics): our names are all legacy-valid, so prometheus-client's
#: ``generate_latest`` writes exactly this format.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    server_version = "mobizo-agent"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        server: _Serving = self.server  # type: ignore[assignment]
        if not self._authorized(server):
            self._reply(401, b"send 'Authorization: Bearer <token>' (the token is in the "
                        b"file [inference] token_file names), or scrape the unix socket\n",
                        "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            return
        if self.path.split("?", 1)[0].rstrip("/") != "/metrics":
            self._reply(404, b"only /metrics is served here\n", "text/plain; charset=utf-8")
            return
        try:
            body, content_type = server.render()
        except Exception as exc:  # noqa: BLE001 - a broken collector must not kill the thread
            log.exception("rendering the metrics failed")
            self._reply(500, f"metrics failed: {exc}\n".encode(), "text/plain; charset=utf-8")
            return
        self._reply(200, body, content_type)

    def _authorized(self, server: _Serving) -> bool:
        if server.token is None:  # the unix socket: its group is the credential
            return True
        try:
            token = server.token()
        except TokenFileError as exc:
            log.error("metrics scrape refused: %s", exc)
            return False
        header = self.headers.get("Authorization") or ""
        if token is None or header[:7].lower() != "bearer ":
            return False
        return hmac.compare_digest(header[7:].strip().encode("utf-8", "replace"),
                                   token.encode("utf-8"))

    def _reply(self, status: int, body: bytes, content_type: str,
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("metrics %s %s", self.address_string(), format % args)


class _Serving(socketserver.ThreadingMixIn):
    """What the handler reads off its server (both kinds below)."""

    daemon_threads = True
    render: Callable[[], Page]
    token: Callable[[], str | None] | None
    timeout_s: float


class _TcpServer(_Serving, HTTPServer):
    address_family = socket.AF_INET


class _Tcp6Server(_Serving, HTTPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Serving, socketserver.UnixStreamServer):
    def server_bind(self) -> None:  # a deep state dir: bind through /proc/self/fd
        with socket_address(Path(self.server_address)) as address:  # type: ignore[arg-type]
            self.socket.bind(address)


class MetricsHttpServer:
    """Serves ``GET /metrics`` on a TCP address or a unix socket, on threads of its own.

    Args:
        render: the page (bytes, Content-Type), called on each scrape's thread.
        tcp: ``(host, port)`` to listen on (port 0: any free port; see :attr:`address`).
        unix: a unix socket path (created mode 0660, replacing one a killed process left).
        token: on TCP, returns the bearer token every request must carry (read per request;
            None from it: no token file yet, every request is refused). Ignored on unix.
        timeout_s: how long a client may take to send its request or read the reply.
    """

    def __init__(self, render: Callable[[], Page], *, tcp: tuple[str, int] | None = None,
                 unix: Path | None = None, token: Callable[[], str | None] | None = None,
                 timeout_s: float = 10.0) -> None:
        if (tcp is None) == (unix is None):
            raise ValueError("give exactly one of tcp and unix")
        if tcp is not None and token is None:
            raise ValueError("a TCP metrics listener needs the bearer token")
        self.unix = Path(unix) if unix is not None else None
        server: _Serving
        if self.unix is not None:
            self.unix.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.unix.unlink()  # left by a killed daemon
            server = _UnixServer(str(self.unix), _Handler)
            os.chmod(self.unix, 0o660)
            server.token = None
        else:
            assert tcp is not None
            cls = _Tcp6Server if ":" in tcp[0] else _TcpServer
            server = cls((tcp[0].strip("[]"), tcp[1]), _Handler)
            server.token = token
        server.render = render
        server.timeout_s = timeout_s
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.5}, name="metrics-http",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound TCP address (useful with port 0); None on a unix socket."""
        if self.unix is not None:
            return None
        bound = self._server.server_address
        assert isinstance(bound, tuple)
        return str(bound[0]), int(bound[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on %s", self.unix or self.address)

    def stop(self) -> None:
        """Stop serving, close the listener, remove the socket file."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()
        if self.unix is not None:
            with contextlib.suppress(FileNotFoundError):
                self.unix.unlink()

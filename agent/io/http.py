"""A small HTTP client for the inference service, over TCP or its unix socket (stdlib only).

The daemon uses it to read ``/health`` (user idle) and to ask for an adapter reload after a
publish; the benchmark and the tests use it as a real client. Over TCP it sends the service's
bearer token (given, or read from the token file at each request, so a token made by the
service after this client was built is picked up); over the unix socket it sends none.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.io.token_file import TokenFileError, read_token


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def events(self) -> list[Any]:
        """Server-sent events of a streamed reply, decoded ('[DONE]' kept as a string)."""
        out: list[Any] = []
        for block in self.text.split("\n\n"):
            if block.startswith("data: "):
                data = block[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


class Client:
    """Requests to one service; a new connection per request (the service speaks HTTP/1.0).

    Args:
        host, port: TCP address; ignored when ``unix`` is given.
        unix: path of the service's unix socket.
        timeout: seconds per request.
        token: the bearer token to send over TCP.
        token_file: where to read the token from when ``token`` is None (a missing file:
            no token sent, the service answers 401).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unix: Path | None = None,
                 timeout: float = 120, token: str | None = None,
                 token_file: Path | None = None) -> None:
        self.host, self.port, self.unix, self.timeout = host, port, unix, timeout
        self.token, self.token_file = token, token_file

    def _auth(self) -> dict[str, str]:
        if self.unix is not None:
            return {}
        token = self.token
        if token is None and self.token_file is not None:
            try:
                token = read_token(self.token_file)
            except TokenFileError:  # unusable file: no token, the service says 401
                token = None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _conn(self) -> http.client.HTTPConnection:
        if self.unix is not None:
            return UnixHTTPConnection(self.unix, self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        conn = self._conn()
        try:
            data = raw if raw is not None else (
                json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json", **self._auth(),
                                  **(headers or {})})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                         resp.read().decode())
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    def complete(self, prompt: str, **kw: Any) -> Reply:
        return self.post("/v1/completions", {"prompt": prompt, **kw})

    def chat(self, content: str, **kw: Any) -> Reply:
        return self.post("/v1/chat/completions",
                         {"messages": [{"role": "user", "content": content}], **kw})

    @classmethod
    def from_url(cls, url: str, timeout: float = 120, token_file: Path | None = None) -> Client:
        """``http://HOST:PORT`` or ``unix:///PATH`` (agent config ``service.inference_url``).

        Args:
            url: where the service is.
            timeout: seconds per request.
            token_file: the API token file (``[inference] token_file``), read per request.
        """
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme == "unix":
            return cls(unix=Path(parts.path), timeout=timeout)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout,
                   token_file=token_file)

    def reload_adapter(self) -> Reply:
        return self.post("/v1/admin/reload-adapter")

    def set_program_resident(self, resident: bool) -> Reply:
        """Release (False: a training burst starts) or load (True) the service's program."""
        return self.post("/v1/admin/program", {"resident": resident})

    def health(self) -> Any:
        return self.get("/health").json

"""The local API's trust boundary (issue 17, docs/security.md "Local API"), on the real service.

Token on TCP, the token-free unix socket, Host allowlist, JSON-only posts, Content-Length
checks before reading, stalled clients against ``/health``, oversize corrections, stop-string
limits, and a store that cannot write answered 503: each against a real ``InferenceService``
on 127.0.0.1 with the real ExecuTorch program and SQLite.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.cli.serve import settings_from_args
from agent.errors import ConfigError
from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig

pytestmark = pytest.mark.runtime


def _start(bundle: Path, state: Path, **cfg: object) -> InferenceService:
    svc = InferenceService(bundle, state, ServeConfig(listen="127.0.0.1:0", **cfg))  # type: ignore[arg-type]
    svc.start()
    return svc


@pytest.fixture(scope="module")
def service(starter_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[InferenceService]:
    state = tmp_path_factory.mktemp("serve-security")
    svc = _start(starter_bundle, state, unix_socket=state / "serve.sock",
                 allowed_hosts=["board.local"], corrections_per_minute=100_000)
    yield svc
    svc.stop()


def _addr(svc: InferenceService) -> tuple[str, int]:
    assert svc.address is not None
    return svc.address


def _raw(addr: tuple[str, int], data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``data`` as it is; the status and the whole reply (the server closes)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


def _post_head(svc: InferenceService, path: str, length: bytes, token: bool = True,
               extra: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {svc.token}\r\n".encode() if token else b""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + auth +
            b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n" +
            extra + b"\r\n")


def test_token_is_required_on_tcp(service: InferenceService) -> None:
    assert os.stat(service.token_path).st_mode & 0o777 == 0o600
    assert service.token and service.token_path.read_text().strip() == service.token
    host, port = _addr(service)
    for client in (Client(host, port), Client(host, port, token="wrong-" + "x" * 40)):
        for reply in (client.get("/v1/models"), client.chat("hi", max_tokens=2),
                      client.post("/v1/feedback", {"id": "int-x", "rating": "up"}),
                      client.reload_adapter()):
            assert reply.status == 401, reply.text
            assert reply.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in reply.json["error"]["message"]
    good = Client(host, port, token=service.token)
    assert good.get("/v1/models").status == 200
    assert good.chat("hi", max_tokens=2, temperature=0).status == 200
    from_file = Client(host, port, token_file=service.token_path)
    assert from_file.get("/v1/models").status == 200


def test_health_without_token_says_nothing_about_users(service: InferenceService) -> None:
    host, port = _addr(service)
    Client(host, port, token=service.token).complete("private text", max_tokens=2)
    public = Client(host, port).get("/health")
    assert public.status == 200
    assert set(public.json) == {"status", "model", "bundle_id"}
    assert "private" not in public.text
    full = Client(host, port, token=service.token).health()
    assert full["last_request_at"] is not None and "queue_depth" in full


def test_unix_socket_needs_no_token(service: InferenceService) -> None:
    assert service.config.unix_socket is not None
    sock = Path(service.config.unix_socket)
    assert os.stat(sock).st_mode & 0o777 == 0o660
    unix = Client(unix=sock)
    reply = unix.chat("over the socket", max_tokens=2, temperature=0)
    assert reply.status == 200, reply.text
    assert unix.post("/v1/feedback", {"id": reply.json["id"], "rating": "up"}).status == 200
    assert "last_request_at" in unix.health()


def test_non_loopback_listen_without_token_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[paths]\nstate_dir = "{tmp_path}"\n[inference]\nrequire_token = false\n')
    argv = ["serve", "--config", str(toml), "--listen", "0.0.0.0:8780"]
    parser, _ = build_parser(argv)
    with pytest.raises(ConfigError, match="not a loopback address.*require_token"):
        settings_from_args(parser.parse_args(argv))
    toml.write_text(toml.read_text() + '[service]\ninference_url = "http://10.1.2.3:8780"\n')
    argv = ["serve", "--config", str(toml)]
    parser, _ = build_parser(argv)
    with pytest.raises(ConfigError, match="not a loopback address"):
        settings_from_args(parser.parse_args(argv))
    argv = ["serve", "--config", str(toml), "--listen", "127.0.0.1:8780"]
    parser, _ = build_parser(argv)
    assert settings_from_args(parser.parse_args(argv))[2].require_token is False


def test_foreign_host_is_403_and_form_posts_415(service: InferenceService) -> None:
    host, port = _addr(service)
    client = Client(host, port, token=service.token)
    for path in ("/health", "/v1/models"):
        reply = client.request("GET", path, headers={"Host": "evil.example"})
        assert reply.status == 403 and "DNS rebinding" in reply.json["error"]["message"]
    evil = client.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
                       headers={"Host": "evil.example:8780"})
    assert evil.status == 403
    for name in ("localhost:8780", "board.local", f"127.0.0.1:{port}"):
        assert client.request("GET", "/v1/models", headers={"Host": name}).status == 200
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        form = client.post("/v1/feedback", raw=b'{"id": "int-x", "rating": "up"}',
                           headers={"Content-Type": kind})
        assert form.status == 415 and "application/json" in form.json["error"]["message"]


@pytest.mark.parametrize(("length", "status"), [
    (b"-1", 400), (b"1e3", 400), (b"\xb2", 400), ("\u0661\u0662".encode(), 400),
    (b"99999999999999999999999", 400), (b"1099511627776", 413), (b"", 400),
])
def test_bad_content_length_is_refused_before_reading(service: InferenceService,
                                                      length: bytes, status: int) -> None:
    t0 = time.monotonic()
    got, reply = _raw(_addr(service), _post_head(service, "/v1/completions", length))
    assert got == status, reply
    assert time.monotonic() - t0 < 2  # answered at once: no body was waited for
    assert b'"error"' in reply


def test_two_content_lengths_and_no_length(service: InferenceService) -> None:
    addr = _addr(service)
    assert _raw(addr, _post_head(service, "/v1/completions", b"5",
                                 extra=b"Content-Length: 6\r\n"))[0] == 400
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{service.token}\r\nContent-Type: application/json\r\n\r\n").encode()
    assert _raw(addr, head)[0] == 411


def test_stop_string_limits(service: InferenceService) -> None:
    client = Client(*_addr(service), token=service.token)
    many = client.complete("x", max_tokens=2, stop=[str(k) for k in range(9)])
    assert many.status == 413 and "stop" in many.json["error"]["message"]
    long = client.complete("x", max_tokens=2, stop=["y" * 300])
    assert long.status == 413
    assert client.complete("x", max_tokens=2, stop=["a", "b"]).status == 200


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _store_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("interactions.sqlite3*"))


def test_a_thousand_1mib_corrections_are_refused_cheaply(service: InferenceService) -> None:
    client = Client(*_addr(service), token=service.token)
    iid = client.complete("correct me", max_tokens=2).json["id"]
    assert service.store is not None and service.store.flush()
    disk0, rss0, t0 = _store_bytes(service.state_dir), _rss_bytes(), time.monotonic()
    body_len = str((1 << 20) + 40).encode()
    for _ in range(1000):  # the head says 1 MiB of body: 413 before any of it is read
        status, _ = _raw(_addr(service), _post_head(service, "/v1/feedback", body_len))
        assert status == 413
    elapsed = time.monotonic() - t0
    correction = "c" * (1 << 20)
    for _ in range(3):  # sent whole: still 413, and the client reads it (no reset)
        reply = client.post("/v1/feedback", {"id": iid, "rating": "down",
                                             "correction": correction})
        assert reply.status == 413, reply.text
    over = client.post("/v1/feedback", {"id": iid, "correction": "d" * 40_000})
    assert over.status == 413 and over.json["error"]["param"] == "correction"
    assert service.store.flush()
    assert _store_bytes(service.state_dir) - disk0 < 256 * 1024
    assert _rss_bytes() - rss0 < 64 << 20
    assert elapsed < 30, f"1,000 refusals took {elapsed:.1f} s"
    assert service.store.get(iid)["correction"] is None  # type: ignore[index]


def test_stalled_clients_never_starve_health(service: InferenceService) -> None:
    addr = _addr(service)
    threads0 = threading.active_count()
    held: list[socket.socket] = []
    try:
        for k in range(200):
            s = socket.create_connection(addr, timeout=5)
            if k % 2:  # stalled in the middle of its head
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConte")
            held.append(s)
        for _ in range(20):  # a complete head, then a body that never comes
            s = socket.create_connection(addr, timeout=5)
            s.sendall(_post_head(service, "/v1/feedback", b"100") + b"{")
            held.append(s)
        public = Client(*addr, timeout=5)
        for _ in range(5):
            t0 = time.monotonic()
            reply = public.get("/health")
            assert reply.status == 200, reply.text
            assert time.monotonic() - t0 < 1.0
        assert threading.active_count() - threads0 < 10  # no thread per connection
    finally:
        for s in held:
            s.close()


def test_a_stalled_request_is_dropped_after_the_read_timeout(starter_bundle: Path,
                                                              tmp_path: Path) -> None:
    svc = _start(starter_bundle, tmp_path, read_timeout_s=0.5)
    try:
        with socket.create_connection(_addr(svc), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            t0 = time.monotonic()
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.0 408") and time.monotonic() - t0 < 3
        with socket.create_connection(_addr(svc), timeout=5) as s:  # body never sent
            s.sendall(_post_head(svc, "/v1/feedback", b"50") + b"{")
            t0 = time.monotonic()
            reply = s.recv(4096)
            assert b" 408 " in reply.split(b"\r\n")[0] and time.monotonic() - t0 < 3
    finally:
        svc.stop()


def test_corrections_per_minute(starter_bundle: Path, tmp_path: Path) -> None:
    svc = _start(starter_bundle, tmp_path, corrections_per_minute=2)
    try:
        client = Client(*_addr(svc), token=svc.token)
        iid = client.complete("x", max_tokens=2).json["id"]
        statuses = [client.post("/v1/feedback", {"id": iid, "correction": f"c{k}"}).status
                    for k in range(3)]
        assert statuses == [200, 200, 429]
        assert client.post("/v1/feedback", {"id": iid, "rating": "up"}).status == 200
    finally:
        svc.stop()


def test_store_that_cannot_write_is_answered_503(starter_bundle: Path, tmp_path: Path) -> None:
    from tests.io.disk_mount import small_disk

    with small_disk(tmp_path / "disk", size="8m") as disk:
        svc = _start(starter_bundle, disk.path / "state")
        try:
            client = Client(*_addr(svc), token=svc.token)
            iid = client.complete("remember", max_tokens=2).json["id"]
            disk.fill()
            statuses = []
            for k in range(20):  # until the WAL must grow: SQLITE_FULL on a full disk
                reply = client.post("/v1/feedback", {"id": iid, "rating": "down",
                                                     "correction": f"{k}" * 30_000})
                statuses.append(reply.status)
                if reply.status == 503:
                    assert "not stored" in reply.json["error"]["message"]
                    assert "recorded" not in reply.text
                    break
            assert statuses[-1] == 503, statuses
            disk.free()
            again = client.post("/v1/feedback", {"id": iid, "rating": "up"})
            assert again.status == 200 and again.json["status"] == "recorded"
        finally:
            svc.stop()

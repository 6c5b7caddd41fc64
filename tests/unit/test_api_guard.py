"""The local API's admission checks (guard.py) and its token file, without a server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.io.token_file import TokenFileError, ensure_token, read_token
from agent.services.inference.guard import (
    HttpError,
    RateWindow,
    allowed_hosts,
    check_host,
    check_json_type,
    check_stops,
    content_length,
    is_loopback,
    token_ok,
)
from agent.services.inference.settings import ServeConfig


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost",
                                  "LOCALHOST.", "app.localhost", "::ffff:127.0.0.1"])
def test_loopback_names(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["evil.example", "10.0.0.1", "0.0.0.0", "::", "localhost.evil"])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_host_allowlist() -> None:
    allowed = allowed_hosts("192.168.1.5", ["Board.Local"])
    for ok in (None, "127.0.0.1:8780", "localhost", "[::1]:8780", "board.local:8780",
               "192.168.1.5:8780"):
        check_host(ok, allowed)
    for bad in ("evil.example", "evil.example:8780", "127.0.0.1.evil.example", "[::2]:80"):
        with pytest.raises(HttpError) as err:
            check_host(bad, allowed)
        assert err.value.status == 403


def test_bearer_token_compare() -> None:
    assert token_ok("Bearer s3cret-token-value", "s3cret-token-value")
    assert token_ok("bearer  s3cret-token-value ", "s3cret-token-value")
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic s3cret-token-value",
                "Bearer s3cret-token-valuex", "Bearer é"):
        assert not token_ok(bad, "s3cret-token-value")
    assert token_ok(None, None)  # no token required


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8",
                                  "Application/JSON"])
def test_json_content_type(kind: str) -> None:
    check_json_type(kind)


@pytest.mark.parametrize("kind", [None, "text/plain", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x", "application/jsonx"])
def test_other_content_types_are_415(kind: str | None) -> None:
    with pytest.raises(HttpError) as err:
        check_json_type(kind)
    assert err.value.status == 415


@pytest.mark.parametrize(("values", "status"), [
    (None, 411), ([], 411), (["-1"], 400), (["+5"], 400), (["1e3"], 400), ([" "], 400),
    (["\u00b2"], 400), (["\u0661\u0662"], 400), (["12", "13"], 400),
    (["1" * 19], 400), (["1048577"], 413), (["99999999999"], 413),
])
def test_bad_content_length(values: list[str] | None, status: int) -> None:
    with pytest.raises(HttpError) as err:
        content_length(values, None, 1 << 20)
    assert err.value.status == status


def test_good_content_length_and_chunked() -> None:
    assert content_length(["0"], None, 10) == 0
    assert content_length(["10", "10"], None, 10) == 10
    with pytest.raises(HttpError) as err:
        content_length(["10"], "chunked", 10)
    assert err.value.status == 411


def test_stop_string_limits() -> None:
    check_stops(("a",) * 4, 4, 8)
    for stops in (("a",) * 5, ("x" * 9,)):
        with pytest.raises(HttpError) as err:
            check_stops(stops, 4, 8)
        assert err.value.status == 413


def test_rate_window() -> None:
    now = [0.0]
    window = RateWindow(2, 60.0, clock=lambda: now[0])
    assert window.take() is None and window.take() is None
    wait = window.take()
    assert wait is not None and 59 < wait <= 60
    now[0] = 60.5
    assert window.take() is None


def test_token_file_is_made_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "inference.token"
    assert read_token(path) is None
    token = ensure_token(path)
    assert len(token) >= 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert ensure_token(path) == token == read_token(path)


def test_token_file_readable_by_others_or_empty_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inference.token"
    ensure_token(path)
    os.chmod(path, 0o640)
    with pytest.raises(TokenFileError, match="chmod 600"):
        read_token(path)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(TokenFileError, match="remove it"):
        ensure_token(path)


def test_token_off_is_refused_off_loopback() -> None:
    ServeConfig(listen="127.0.0.1:0", require_token=False)
    ServeConfig(listen="[::1]:0", require_token=False)
    ServeConfig(listen=None, require_token=False)
    ServeConfig(listen="0.0.0.0:8780")  # with the token: allowed
    for listen in ("0.0.0.0:8780", "192.168.1.5:8780", "[::]:8780"):
        with pytest.raises(ValueError, match="not a loopback address"):
            ServeConfig(listen=listen, require_token=False)

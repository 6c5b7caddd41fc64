"""Who may talk to the local API, and what a request may look like before it is read.

Checked in this order, each with a JSON error a client can act on:

1. **Host** (TCP only): loopback names, the listen address and ``allowed_hosts``. A web page
   that rebinds its own DNS name to 127.0.0.1 still sends its own name: 403.
2. **Bearer token** (TCP only; the unix socket's group is its credential): 401. ``/health``
   answers without it, but then says nothing about users (no activity times, no counts).
3. **Content type** of a POST: ``application/json`` only, so a browser's form post (which
   cannot set it without a CORS preflight that we never answer) is refused: 415.
4. **Content-Length**: ASCII digits only, one value, at most ``max_body_bytes``: 400, 411 or
   413, all before a byte of the body is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_LENGTH = re.compile(r"[0-9]{1,18}")  # [0-9], not \d: no Unicode digits


class HttpError(Exception):
    """A request refused with ``status``; ``extra`` goes into the JSON error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}
        self.extra = extra


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    name = host.strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header value (port and IPv6 brackets removed), lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_hosts(listen_host: str | None, extra: Iterable[str]) -> frozenset[str]:
    """The Host names a TCP request may carry besides loopback ones."""
    names = {host_name(h) for h in extra if h.strip()}
    if listen_host and listen_host.strip("[]") not in ("", "0.0.0.0", "::"):
        names.add(listen_host.strip("[]").lower())
    return frozenset(names)


def check_host(header: str | None, allowed: frozenset[str]) -> None:
    """Raise 403 unless the Host header names this service (absent: not a browser, fine)."""
    if header is None:
        return
    name = host_name(header)
    if not (is_loopback(name) or name in allowed):
        raise HttpError(403, f"Host {header!r} is not one of this service's names (loopback "
                        "or inference.allowed_hosts); refusing (DNS rebinding?)",
                        "permission_error")


def token_ok(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time compare)."""
    if token is None:
        return True
    if header is None or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode("utf-8", "replace"),
                               token.encode("utf-8"))


def check_json_type(header: str | None) -> None:
    """Raise 415 unless the Content-Type is ``application/json`` (parameters allowed)."""
    kind = (header or "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise HttpError(415, f"Content-Type {header!r} is not accepted: send the body as "
                        "JSON with 'Content-Type: application/json'", "unsupported_media_type")


def content_length(values: list[str] | None, transfer_encoding: str | None, limit: int) -> int:
    """The body length a request declares, checked before anything is read.

    Raises:
        HttpError: 411 without one (or chunked), 400 when malformed or repeated with another
            value, 413 above ``limit``.
    """
    if transfer_encoding is not None:
        raise HttpError(411, "chunked bodies are not accepted: send a Content-Length")
    if not values:
        raise HttpError(411, "send the JSON body with a Content-Length header")
    if len({v.strip() for v in values}) != 1 or not _LENGTH.fullmatch(values[0].strip()):
        raise HttpError(400, f"malformed Content-Length {values!r}: one value of ASCII digits")
    length = int(values[0].strip())
    if length > limit:
        raise HttpError(413, f"request body of {length} bytes is over the limit of {limit}",
                        limit_bytes=limit)
    return length


def check_stops(stops: tuple[str, ...], max_count: int, max_chars: int) -> None:
    """Raise 413 for more than ``max_count`` stop strings or one over ``max_chars``."""
    if len(stops) > max_count:
        raise HttpError(413, f"{len(stops)} stop strings; at most {max_count}",
                        param="stop", limit=max_count)
    longest = max((len(s) for s in stops), default=0)
    if longest > max_chars:
        raise HttpError(413, f"a stop string of {longest} characters; at most {max_chars}",
                        param="stop", limit_chars=max_chars)


class RateWindow:
    """At most ``count`` events in any ``window_s`` seconds (corrections per minute)."""

    def __init__(self, count: int, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.count, self.window_s, self._clock = count, window_s, clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Count one event; None when allowed, else the seconds until one would be."""
        now = self._clock()
        with self._lock:
            while self._times and now - self._times[0] >= self.window_s:
                self._times.popleft()
            if len(self._times) >= self.count:
                return self.window_s - (now - self._times[0])
            self._times.append(now)
            return None

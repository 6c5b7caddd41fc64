"""systemd integration: the sd_notify protocol (Type=notify) and journal logging.

Protocol (sd_notify(3), systemd.service(5) Type=notify / notify-reload): newline-separated
``KEY=VALUE`` datagrams sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` — a path, or an
abstract socket when it starts with ``@``. We send

- ``READY=1`` once config and store are open (never waiting for the network),
- ``STATUS=<text>`` with the human state,
- ``WATCHDOG=1`` from the main loop while it is healthy, every ``WATCHDOG_USEC/2``,
- ``RELOADING=1`` + ``MONOTONIC_USEC=<CLOCK_MONOTONIC µs>`` on SIGHUP, then ``READY=1``,
- ``STOPPING=1`` on shutdown.

systemd-python's ``systemd.daemon.notify`` is used when it is installed and the socket comes
from the environment; otherwise a raw datagram does the same. Without ``NOTIFY_SOCKET`` every
call is a no-op, so the daemon runs unchanged in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

log = logging.getLogger(__name__)

try:  # optional: needs libsystemd-dev to build (pyproject extra "systemd")
    from systemd import daemon as _sd_daemon  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the machine
    _sd_daemon = None

try:
    from systemd import journal as _sd_journal  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the machine
    _sd_journal = None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock RELOADING's MONOTONIC_USEC must use."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None if not enabled.

    ``WATCHDOG_PID``, when set, must be this process (it is not inherited by children).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid and wd_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages; a no-op when there is no notify socket.

    Args:
        socket_path: the notify socket (``@name`` = abstract). Default: ``$NOTIFY_SOCKET``.
            Given explicitly, the raw protocol is used (systemd-python reads only the env).
        use_systemd_python: None = use it when available and the socket comes from the env;
            False = always the raw protocol.
        clock: CLOCK_MONOTONIC µs for MONOTONIC_USEC (injectable for tests).
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        use_systemd_python: bool | None = None,
        clock: Callable[[], int] = monotonic_usec,
    ) -> None:
        env = os.environ if env is None else env
        from_env = socket_path is None
        self.socket_path = (env.get("NOTIFY_SOCKET") or None) if from_env else socket_path
        self._clock = clock
        want_lib = use_systemd_python is not False and from_env
        self.backend = (
            "none" if not self.socket_path
            else "systemd-python" if want_lib and _sd_daemon is not None
            else "socket"
        )
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere."""
        return self.backend != "none"

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; False if not sent (never raises)."""
        if not self.enabled:
            return False
        message = "\n".join(fields)
        try:
            if self.backend == "systemd-python":
                return bool(_sd_daemon.notify(message))
            return self._send_raw(message.encode("utf-8"))
        except OSError as exc:
            # The manager may be gone during shutdown; notify must never kill the daemon.
            log.debug("sd_notify failed: %s", exc)
            return False

    def _send_raw(self, data: bytes) -> bool:
        assert self.socket_path is not None
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace (unix(7))
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.sendto(data, address)
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (startup done, or a reload finished), optionally with a STATUS."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=<text>: shown by ``systemctl status``. Newlines would split the field."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """WATCHDOG=1: call from the main loop only while it is healthy."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 + MONOTONIC_USEC (required by Type=notify-reload, systemd >= 253)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._clock()}")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the raw socket, if one was opened."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class WatchdogPinger:
    """Sends WATCHDOG=1 at most every ``interval`` seconds, driven by the main loop.

    Call :meth:`tick` once per main-loop iteration (after the loop's own health checks): when
    the loop hangs, ticks stop, pings stop, and systemd restarts the service — which is the
    point, so never ping from a separate thread.

    Args:
        notifier: where pings go.
        interval: seconds between pings (:func:`watchdog_interval`); None disables pinging.
        clock: monotonic seconds.
    """

    def __init__(
        self, notifier: Notifier, interval: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def tick(self) -> bool:
        """Ping if one is due; True when a ping was sent."""
        if self.interval is None or not self.notifier.enabled:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return self.notifier.watchdog()


# ---------------------------------------------------------------------------------------------
# Logging


def under_journal(env: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to the journal (systemd sets ``$JOURNAL_STREAM``)."""
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM"))


def make_log_handler(
    journal: str = "auto",
    *,
    env: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    identifier: str = "mobizo-agent",
) -> logging.Handler:
    """A log handler for the daemon.

    Args:
        journal: "on" = journal (with structured fields), "off" = stderr, "auto" = the
            journal when started by systemd (``$JOURNAL_STREAM``) and systemd-python is present.
        env: environment (default ``os.environ``).
        stream: the stderr stream for the fallback.
        identifier: SYSLOG_IDENTIFIER in the journal.

    Structured fields: pass ``extra={"BURST_ID": ..., "ADAPTER": ...}`` (upper-case keys) to a
    log call; the journal handler stores them as journal fields (``journalctl -o verbose``).
    """
    use_journal = journal == "on" or (journal == "auto" and under_journal(env))
    if use_journal and _sd_journal is not None:
        handler: logging.Handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=identifier)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    if use_journal and journal == "on":
        log.warning("journal logging asked for but systemd-python is missing; using stderr")
    handler = logging.StreamHandler(stream or sys.stderr)
    # Under systemd without the library, the journal still timestamps lines: omit ours.
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journal(env) else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler.setFormatter(logging.Formatter(fmt))
    return handler


def configure_logging(
    level: str = "INFO", journal: str = "auto", *, env: Mapping[str, str] | None = None,
    logger: logging.Logger | None = None, **kwargs: Any,
) -> logging.Handler:
    """Replace the handlers of ``logger`` (default root) with :func:`make_log_handler`'s."""
    logger = logger or logging.getLogger()
    handler = make_log_handler(journal, env=env, **kwargs)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler

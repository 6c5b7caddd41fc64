"""sd_notify against a REAL unix datagram socket that the test binds (as systemd would)."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.io import systemd as sd
from agent.io.systemd import Notifier, make_log_handler, watchdog_interval


class NotifySocket:
    """A bound AF_UNIX datagram socket: what systemd listens on for a Type=notify service."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind)
        self.sock.settimeout(5.0)

    def messages(self, n: int) -> list[dict[str, str]]:
        out = []
        for _ in range(n):
            data = self.sock.recv(4096).decode()
            out.append(dict(line.split("=", 1) for line in data.split("\n") if line))
        return out

    def pending(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(4096)
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(5.0)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: sun_path holds at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        s = NotifySocket(str(Path(d) / "notify"))
        yield s
        s.sock.close()


def send_lifecycle(notifier: Notifier) -> None:
    assert notifier.ready("idle")
    assert notifier.status("waiting: on battery 54% < 80%")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.stopping()


def check_lifecycle(messages: list[dict[str, str]], before_us: int) -> None:
    assert [sorted(m) for m in messages] == [
        ["READY", "STATUS"], ["STATUS"], ["WATCHDOG"], ["MONOTONIC_USEC", "RELOADING"],
        ["READY"], ["STOPPING"],
    ]
    assert messages[0] == {"READY": "1", "STATUS": "idle"}
    assert messages[1]["STATUS"] == "waiting: on battery 54% < 80%"
    reload_us = int(messages[3]["MONOTONIC_USEC"])
    # CLOCK_MONOTONIC, in µs, taken between the start of the test and now.
    assert before_us <= reload_us <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_raw_socket_path_in_order(notify_socket: NotifySocket) -> None:
    before = sd.monotonic_usec()
    notifier = Notifier(notify_socket.address)
    assert notifier.backend == "socket"
    send_lifecycle(notifier)
    notifier.close()
    check_lifecycle(notify_socket.messages(6), before)


def test_abstract_socket() -> None:
    sock = NotifySocket(f"@mobizo-test-{uuid.uuid4().hex}")
    try:
        notifier = Notifier(sock.address)
        assert notifier.ready()
        assert sock.messages(1) == [{"READY": "1"}]
    finally:
        sock.sock.close()


@pytest.mark.skipif(sd._sd_daemon is None, reason="systemd-python not installed")
def test_systemd_python_backend_from_env(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sd.monotonic_usec()
    # systemd.daemon.notify reads the process environment itself, as under systemd.
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    notifier = Notifier()
    assert notifier.backend == "systemd-python"
    send_lifecycle(notifier)
    check_lifecycle(notify_socket.messages(6), before)


@pytest.mark.parametrize("raw", [False, True])
def test_child_process_with_notify_socket_in_its_env(
    notify_socket: NotifySocket, raw: bool
) -> None:
    """The code under test runs in its own process with NOTIFY_SOCKET set, as under systemd."""
    code = textwrap.dedent(f"""
        from agent.io.systemd import Notifier
        n = Notifier(use_systemd_python={'False' if raw else 'None'})
        print(n.backend)
        n.ready("starting"); n.status("training 3/50"); n.watchdog()
        n.reloading(); n.ready(); n.stopping()
    """)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address}
    before = sd.monotonic_usec()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    messages = notify_socket.messages(6)
    assert [next(iter(m)) for m in messages] == [
        "READY", "STATUS", "WATCHDOG", "RELOADING", "READY", "STOPPING"]
    assert messages[1]["STATUS"] == "training 3/50"
    assert before <= int(messages[3]["MONOTONIC_USEC"])
    expected = "socket" if raw or sd._sd_daemon is None else "systemd-python"
    assert proc.stdout.strip() == expected


def test_no_socket_is_a_noop(notify_socket: NotifySocket) -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled and notifier.backend == "none"
    assert notifier.ready() is False and notifier.watchdog() is False
    assert not notify_socket.pending()


def test_vanished_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.stopping() is False


def test_status_is_one_line(notify_socket: NotifySocket) -> None:
    Notifier(notify_socket.address).status("error:\ntrainer crashed")
    assert notify_socket.messages(1) == [{"STATUS": "error: trainer crashed"}]


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0


def test_log_handler_stderr_and_journal() -> None:
    stream = io.StringIO()
    handler = make_log_handler("off", env={"JOURNAL_STREAM": "8:123"}, stream=stream)
    logger = logging.getLogger("test.systemd.stderr")
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning("battery %d%%", 54)
    logger.removeHandler(handler)
    assert stream.getvalue() == "WARNING test.systemd.stderr: battery 54%\n"
    terminal = make_log_handler("auto", env={}, stream=io.StringIO())
    assert isinstance(terminal, logging.StreamHandler)
    if sd._sd_journal is not None:
        journal = make_log_handler("auto", env={"JOURNAL_STREAM": "8:123"})
        assert type(journal).__name__ == "JournalHandler"


def test_watchdog_pinger_rate_with_a_fake_clock(notify_socket: NotifySocket) -> None:
    now = [100.0]
    pinger = sd.WatchdogPinger(Notifier(notify_socket.address), 15.0, clock=lambda: now[0])
    sent = []
    for t in (100.0, 101.0, 114.9, 115.0, 120.0, 130.0):
        now[0] = t
        sent.append(pinger.tick())
    assert sent == [True, False, False, True, False, True]
    assert notify_socket.messages(3) == [{"WATCHDOG": "1"}] * 3
    assert not sd.WatchdogPinger(Notifier(notify_socket.address), None).tick()


def test_watchdog_pings_stop_when_the_loop_hangs(notify_socket: NotifySocket) -> None:
    """A real main loop in a thread, pinging every 20 ms; when it hangs, pings stop."""
    import threading

    stop, hang = threading.Event(), threading.Event()
    pinger = sd.WatchdogPinger(Notifier(notify_socket.address), 0.02)

    def loop() -> None:
        while not stop.wait(0.005):
            if hang.is_set():
                stop.wait()  # stuck (e.g. a blocking call that never returns)
            pinger.tick()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert len(notify_socket.messages(3)) == 3  # pings flow while healthy
        hang.set()
        time.sleep(0.1)
        while notify_socket.pending():  # drain pings sent before the hang took effect
            pass
        assert not notify_socket.pending()
    finally:
        stop.set()
        thread.join(5)

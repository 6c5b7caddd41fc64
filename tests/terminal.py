"""Run a command on a real pseudo-terminal (python's ``pty``), or with pipes, for the tests of
what a person sees (progress bars) against what a log gets (no carriage returns)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(columns: int) -> dict[str, str]:
    env = dict(os.environ, COLUMNS=str(columns), PYTHONUNBUFFERED="1", TERM="xterm")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_in_pty(argv: Sequence[str], *, timeout: float = 120.0,
               columns: int = 100) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on one pty; its exit code and everything it
    wrote (carriage returns kept, newlines as the terminal sends them: ``\\r\\n``)."""
    master, slave = pty.openpty()
    # The window size is what os.get_terminal_size reads (COLUMNS alone is not).
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave,
                            env=_env(columns), cwd=REPO, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def run_piped(argv: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout and stderr on pipes (as under systemd or CI)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=_env(100), cwd=REPO, stdin=subprocess.DEVNULL)


def python(code: str) -> list[str]:
    """argv running ``code`` with this interpreter."""
    return [sys.executable, "-c", code]

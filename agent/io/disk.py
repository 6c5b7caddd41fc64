"""Disk faults: telling a full or read-only disk from other errors, and saying so to a person.

Every write path (the interaction store, the status file, the registry, checkpoints, the
spool, the fleet store) meets the same few failures on a device: the SD card is full
(``ENOSPC``, SQLite's ``SQLITE_FULL``), a quota is hit (``EDQUOT``), or the kernel remounted
the filesystem read-only after an I/O error (``EROFS``, ``SQLITE_READONLY``). None of them is
a bug of the agent, and none of them may crash it: the write fails, what was stored before
stays, the fault is reported with a line a person can act on, and the next write after space
returns succeeds. :class:`DiskFaults` collects the faults every path reports (thread-safe),
so the daemon's status can show them and clear them once writes succeed again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: Below this much free space a failed write is reported as a full disk.
LOW_SPACE_BYTES = 1 << 20

# errnos that mean "the disk cannot take this write now", not "the agent is broken"
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# SQLite reports the same conditions as text (sqlite3.OperationalError has no errno)
_SQLITE_DISK_TEXT = ("database or disk is full", "readonly database", "disk i/o error",
                     "read-only file system", "no space left")


def is_disk_fault(exc: BaseException) -> bool:
    """True when ``exc`` says the disk is full, over quota, read-only or failing."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_ERRNOS
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        return any(t in text for t in _SQLITE_DISK_TEXT)
    return False


def is_disk_fault_at(exc: BaseException, path: Path) -> bool:
    """:func:`is_disk_fault`, or an I/O error of any wording where ``path`` is read-only
    (SQLite says only "unable to open database file" on a read-only mount)."""
    return is_disk_fault(exc) or (isinstance(exc, (OSError, sqlite3.Error))
                                  and read_only(path))


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (None: unknown)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_only(path: Path) -> bool:
    """True when ``path``'s filesystem is mounted read-only."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def _write_probe(path: Path) -> int | None:
    """Try to create (and remove) a file beside ``path``; the errno it failed with, or None.

    SQLite's errors carry no errno ("disk I/O error" may be a full or a read-only disk), so a
    failed SQLite write is classified by what the filesystem says to a tiny write of ours.
    """
    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def describe(path: Path, exc: BaseException) -> str:
    """A line a person can act on: ``disk full at /var/lib/x: 12.0 KiB free``."""
    text = str(exc).lower()
    code = exc.errno if isinstance(exc, OSError) else _write_probe(path)
    if code == errno.EROFS or read_only(path) or "readonly" in text or "read-only" in text:
        return f"filesystem read-only at {path}: remount it read-write or check the card"
    free = free_bytes(path)
    if code in (errno.ENOSPC, errno.EDQUOT) or "full" in text or (
            free is not None and free < LOW_SPACE_BYTES):
        room = f"{human_bytes(free)} free" if free is not None else "free space unknown"
        return f"disk full at {path}: {room}; free space there (e.g. `mobizo-agent data purge`)"
    return f"disk I/O error at {path}: check the card ({exc})"


class DiskFaults:
    """The disk faults the write paths saw and have not yet recovered from. Thread-safe.

    Each path reports under its own name ("store", "status", "registry", ...); a later
    successful write on that path clears it.

    Args:
        clock: seconds (when a fault was first seen).
        on_change: called (outside the lock) when the set of faults changed.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[str, float]] = {}
        self.on_change = on_change

    def report(self, where: str, path: Path, exc: BaseException) -> str:
        """Record that ``where`` failed to write ``path`` with ``exc``; returns the message."""
        message = describe(path, exc)
        self.note(where, message)
        return message

    def clear(self, where: str) -> None:
        """``where`` wrote successfully again."""
        with self._lock:
            changed = self._faults.pop(where, None) is not None
        if changed and self.on_change is not None:
            self.on_change()

    def note(self, where: str, message: str | None) -> None:
        """Record a fault the path described itself (``None``: it wrote again, clear it).

        For paths that keep their own last error (the spool, the fleet store) and never
        raise into their caller.
        """
        with self._lock:
            old = self._faults.get(where)
            if message is None:
                changed = self._faults.pop(where, None) is not None
            else:
                changed = old is None or old[0] != message
                self._faults[where] = (message, old[1] if old else self._clock())
        if changed and self.on_change is not None:
            self.on_change()

    def get(self, where: str) -> str | None:
        with self._lock:
            fault = self._faults.get(where)
        return fault[0] if fault else None

    def messages(self) -> list[str]:
        """Every current fault as ``where: message``, oldest first."""
        with self._lock:
            items = sorted(self._faults.items(), key=lambda kv: kv[1][1])
        return [f"{where}: {message}" for where, (message, _) in items]

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._faults)

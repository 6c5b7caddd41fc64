"""Progress a person can see on a terminal, and quiet plain lines where nobody watches.

Two shapes, each with a terminal form and a log form:

- a **bar** for counted work (``mobizo-agent train``: steps, ETA, loss): :class:`BarProgress`
  redraws one line in place (carriage return), fitted to the terminal's width, at most every
  ``min_interval_s``; :class:`LogProgress` writes a plain line at most every ``every_s``
  (systemd's journal, CI logs: no carriage returns, no flood);
- **stages** of work that cannot be counted (``mobizo-export``: lowering takes minutes):
  :class:`StageLine` turns the log records of a package into a live line with the stage's
  elapsed time, redrawn each second; where stderr is not a terminal, logging stays as it was.

``auto`` picks the terminal form when the stream is a TTY. No dependency beyond the standard
library (tqdm draws bars too, but not stages, and it is one more thing that writes ``\\r``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Literal, Protocol, TextIO

Mode = Literal["auto", "bar", "log", "none"]
Clock = Callable[[], float]


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for pipes, files, closed or fake streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def terminal_width(stream: TextIO, default: int = 80) -> int:
    """Columns of the terminal behind ``stream``; ``default`` when it has none."""
    try:
        return max(20, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, ValueError, OSError):
        return default


def format_duration(seconds: float) -> str:
    """``42s``, ``3:05`` or ``1:02:03``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def _fields(fields: dict[str, float | str]) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in fields.items())


class Progress(Protocol):
    """Counted work: ``update`` with the units done so far, then ``close``."""

    def update(self, done: int, **fields: float | str) -> None: ...

    def close(self) -> None: ...


class _Rate:
    """Units per second since the first update (so loading time does not skew the ETA)."""

    def __init__(self, total: int, clock: Clock) -> None:
        self.total = total
        self.clock = clock
        self.started = clock()
        self._first: tuple[int, float] | None = None

    def eta(self, done: int) -> float | None:
        now = self.clock()
        if self._first is None:
            self._first = (done, now)
            return None
        units, since = done - self._first[0], now - self._first[1]
        if units <= 0 or since <= 0:
            return None
        return max(0, self.total - done) * since / units


class BarProgress:
    """A bar redrawn in place on a terminal: ``desc |####    | 12/100 12% 0:42 ~2:10 loss 2.3``.

    Args:
        stream: the terminal (stderr).
        total: units of the whole job.
        desc: what is running.
        clock: monotonic seconds (injected in tests).
        min_interval_s: redraw at most this often (the last unit always redraws).
        width: columns; default: the terminal's, read at each redraw (it may be resized).
    """

    def __init__(self, stream: TextIO, total: int, desc: str, *, clock: Clock = time.monotonic,
                 min_interval_s: float = 0.1, width: int | None = None) -> None:
        self.stream, self.total, self.desc = stream, max(1, total), desc
        self.clock, self.min_interval_s, self.width = clock, min_interval_s, width
        self._rate = _Rate(self.total, clock)
        self._last_draw: float | None = None
        self._drawn = False

    def line(self, done: int, eta: float | None, fields: dict[str, float | str]) -> str:
        """The line for ``done`` units, fitted to the width (the bar shrinks first)."""
        width = (self.width or terminal_width(self.stream)) - 1  # the last column wraps
        pct = min(100, 100 * done // self.total)
        tail = f" {done}/{self.total} {pct}% {format_duration(self.clock() - self._rate.started)}"
        tail += f" ~{format_duration(eta)} left" if eta is not None else ""
        tail += f" {_fields(fields)}" if fields else ""
        room = width - len(self.desc) - len(tail) - 3
        if room < 5:
            return (self.desc + tail)[:width]
        filled = room * min(done, self.total) // self.total
        return f"{self.desc} |{'#' * filled}{' ' * (room - filled)}|{tail}"

    def update(self, done: int, **fields: float | str) -> None:
        eta = self._rate.eta(done)
        now = self.clock()
        due = self._last_draw is None or now - self._last_draw >= self.min_interval_s
        if not (due or done >= self.total):
            return
        self._last_draw = now
        text = self.line(done, eta, fields)
        pad = max(0, (self.width or terminal_width(self.stream)) - 1 - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class LogProgress:
    """Plain lines at most every ``every_s`` seconds, and one at the end: for logs."""

    def __init__(self, stream: TextIO, total: int, desc: str, *, clock: Clock = time.monotonic,
                 every_s: float = 30.0) -> None:
        self.stream, self.total, self.desc = stream, max(1, total), desc
        self.clock, self.every_s = clock, every_s
        self._rate = _Rate(self.total, clock)
        self._last_line = clock()
        self._pending: str | None = None

    def _text(self, done: int, eta: float | None, fields: dict[str, float | str]) -> str:
        text = (f"{self.desc}: {done}/{self.total} ({min(100, 100 * done // self.total)}%), "
                f"{format_duration(self.clock() - self._rate.started)} elapsed")
        text += f", ~{format_duration(eta)} left" if eta is not None else ""
        return text + (f", {_fields(fields)}" if fields else "")

    def update(self, done: int, **fields: float | str) -> None:
        text = self._text(done, self._rate.eta(done), fields)
        if self.clock() - self._last_line >= self.every_s:
            self._write(text)
        else:
            self._pending = text

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = self.clock()
        self._pending = None

    def close(self) -> None:
        if self._pending is not None:
            self._write(self._pending)


class NullProgress:
    """Shows nothing (``--progress json``: the JSON lines are the progress)."""

    def update(self, done: int, **fields: float | str) -> None:
        pass

    def close(self) -> None:
        pass


def open_progress(stream: TextIO, total: int, desc: str, *, mode: Mode = "auto",
                  every_s: float = 30.0, clock: Clock = time.monotonic) -> Progress:
    """The progress display for ``mode``: ``auto`` is a bar on a terminal, else log lines."""
    if mode == "auto":
        mode = "bar" if is_terminal(stream) else "log"
    if mode == "bar":
        return BarProgress(stream, total, desc, clock=clock)
    if mode == "log":
        return LogProgress(stream, total, desc, clock=clock, every_s=every_s)
    return NullProgress()

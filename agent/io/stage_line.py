"""Stages of uncountable work as a live terminal line: ``[3:10] lowering train program … 1:42``.

:class:`StageLine` is a logging handler. Each INFO record of the watched package (``exporter``)
starts a stage: the finished one is printed for good with how long it took (``✓ … 42s``), and
the new one is redrawn in place each second with its elapsed time and the total, so a lowering
that takes minutes visibly moves. Any other record (a warning, another library's line) is
printed above the live line. :func:`stage_logging` installs it when the stream is a terminal;
otherwise logging is set up as before (plain ``LEVEL message`` lines, nothing redrawn). What a
native library writes straight to the file descriptor (ExecuTorch's C++ logs) cannot be
routed: it lands after the live line, and the next redraw starts a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from agent.io.progress import Clock, format_duration, is_terminal, terminal_width

PLAIN_FORMAT = "%(levelname)s %(message)s"


class StageLine(logging.Handler):
    """Log records of ``package`` at INFO as stages on one live line; the rest as lines.

    Args:
        stream: the terminal.
        package: logger name whose INFO records are stages (its children too).
        clock: monotonic seconds.
        tick_s: how often the live line is redrawn (None: only on records; for tests).
        width: columns; default: the terminal's.
    """

    def __init__(self, stream: TextIO, package: str, *, clock: Clock = time.monotonic,
                 tick_s: float | None = 1.0, width: int | None = None) -> None:
        super().__init__()
        self.stream, self.package, self.clock, self.width = stream, package, clock, width
        self.started = clock()
        self._stage: tuple[str, float] | None = None
        self._lock = threading.RLock()  # records come from any thread, the ticker from its own
        self._done = threading.Event()
        self._ticker: threading.Thread | None = None
        if tick_s is not None:
            self._ticker = threading.Thread(target=self._tick, args=(tick_s,),
                                            name="stage-line", daemon=True)
            self._ticker.start()

    def _is_stage(self, record: logging.LogRecord) -> bool:
        name = record.name
        return record.levelno == logging.INFO and (
            name == self.package or name.startswith(self.package + "."))

    def _columns(self) -> int:
        return (self.width or terminal_width(self.stream)) - 1  # the last column wraps

    def _clear(self) -> None:
        self.stream.write("\r" + " " * self._columns() + "\r")

    def live_text(self) -> str:
        """The live line: total elapsed, the stage, its own elapsed time; fitted to the width."""
        if self._stage is None:
            return ""
        message, since = self._stage
        now = self.clock()
        head = f"[{format_duration(now - self.started)}] "
        tail = f" … {format_duration(now - since)}"
        room = self._columns() - len(head) - len(tail)
        if len(message) > room:
            message = message[: max(0, room - 1)] + "…"
        return head + message + tail

    def _redraw(self) -> None:
        text = self.live_text()
        if text:
            self.stream.write("\r" + text.ljust(self._columns()))
        self.stream.flush()

    def _finish_stage(self) -> None:
        if self._stage is not None:
            message, since = self._stage
            self._clear()
            self.stream.write(f"✓ {message} ({format_duration(self.clock() - since)})\n")
            self._stage = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            with self._lock:
                if self._is_stage(record):
                    self._finish_stage()
                    self._stage = (record.getMessage(), self.clock())
                else:
                    self._clear()
                    self.stream.write(text.rstrip("\n") + "\n")  # a warning ends in one
                self._redraw()
        except Exception:  # noqa: BLE001 - logging must never raise into the exporter
            self.handleError(record)

    def _tick(self, every_s: float) -> None:
        while not self._done.wait(every_s):
            with self._lock, contextlib.suppress(Exception):
                self._redraw()

    def close(self) -> None:
        """End the live line: the last stage is printed with its time, then the total."""
        self._done.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            had_stage = self._stage is not None
            self._finish_stage()
            if had_stage:
                self.stream.write(f"  total {format_duration(self.clock() - self.started)}\n")
            self.stream.flush()
        super().close()


@contextlib.contextmanager
def stage_logging(stream: TextIO, level: str, package: str, *,
                  live: bool | None = None) -> Iterator[StageLine | None]:
    """Set up logging for a command: a :class:`StageLine` on a terminal, else plain lines.

    Args:
        stream: where records go (stderr).
        level: the root logger's level (``INFO``).
        package: whose INFO records are stages.
        live: force the live line on or off; None: on when ``stream`` is a terminal.

    Yields:
        The handler when the line is live, else None.
    """
    if not (is_terminal(stream) if live is None else live):
        logging.basicConfig(level=level, format=PLAIN_FORMAT, stream=stream)
        yield None
        return
    handler = StageLine(stream, package)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)
    # Python warnings (torch emits many while lowering) as records, printed above the live
    # line instead of glued to its end.
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()

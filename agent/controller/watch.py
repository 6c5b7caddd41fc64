"""``mobizo-fleet watch``: a live table of the fleet.

On a terminal the table is redrawn in place (cursor home, each line cleared, the rest of the
screen cleared) at most every ``interval`` seconds, and only when something changed. When the
output is not a terminal (a pipe, a log file) it writes plain lines instead: a header once,
then one row per device each time its row changes, with the time: no escape codes, nothing
repeated, easy to ``grep``.

The columns come from the retained ``available`` and ``state`` documents and the live
``telemetry``: the link (online / offline / stopped), the daemon's state, the active adapter
version, the last loss (the newest telemetry point, else the last burst's), the SoC
temperature, and the last federated round (``r4:trained``, ``r5:declined``; issue 20).
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import paho.mqtt.client as paho

from agent.controller.client import DeviceView, FleetClient

COLUMNS = ("DEVICE", "LINK", "STATE", "ADAPTER", "LOSS", "TEMP", "ROUND")
_WIDTHS = (20, 8, 10, 8, 9, 6, 12)  # plain-line mode cannot measure rows it has not seen yet
_TEMP_TEXT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*C\b")


def last_loss(view: DeviceView) -> float | None:
    """The newest loss known for the device: its telemetry's last point, else its last burst."""
    points = (view.telemetry or {}).get("points") or []
    for point in reversed(points):
        if isinstance(point, dict) and isinstance(point.get("loss"), int | float):
            return float(point["loss"])
    burst = view.state.last_burst if view.state else None
    return burst.loss if burst is not None else None


def temperature(view: DeviceView) -> float | None:
    """The hottest watched zone in °C (``temp_c``, else parsed from the ``thermal`` text)."""
    if view.state is None:
        return None
    constraints = view.state.constraints
    value = getattr(constraints, "temp_c", None)
    if isinstance(value, int | float):
        return float(value)
    match = _TEMP_TEXT.match(constraints.thermal or "")
    return float(match.group(1)) if match else None


def federated_round(view: DeviceView) -> str:
    """The device's last federated round as one word: ``r4:trained``; ``-`` before any."""
    fed = view.state.federated if view.state else None
    return f"r{fed.round}:{fed.status}" if fed is not None else "-"


def row(view: DeviceView) -> tuple[str, ...]:
    """One device's cells, in :data:`COLUMNS` order."""
    st = view.state
    link = "online" if view.online else (view.available.status if view.available else "unknown")
    loss, temp = last_loss(view), temperature(view)
    return (
        view.device_id,
        link,
        st.state if st else "-",
        str(st.adapter.version) if st and st.adapter.version is not None else "-",
        f"{loss:.4g}" if loss is not None else "-",
        f"{temp:.0f}C" if temp is not None else "-",
        federated_round(view),
    )


def render(views: dict[str, DeviceView]) -> list[str]:
    """The whole table, aligned to its widest cells."""
    rows = [COLUMNS] + [row(views[k]) for k in sorted(views)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def plain(cells: tuple[str, ...], stamp: str) -> str:
    """One plain line: fixed-width cells and the time."""
    text = "  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=True))
    return f"{text}  {stamp}".rstrip()


@dataclass
class WatchLimits:
    """When to stop: after ``count`` changes, after ``duration`` seconds, or never (Ctrl-C)."""

    count: int | None = None
    duration: float | None = None
    interval: float = 0.5


class Watch:
    """Follows the fleet and writes the table to ``out`` (a terminal or not)."""

    def __init__(self, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.time) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self.views: dict[str, DeviceView] = {}
        self.changes = 0
        self._shown: dict[str, tuple[str, ...]] = {}
        self._dirty = False
        self._drawn_at = 0.0

    def start(self) -> None:
        """Clear the screen (terminal) or write the header (plain lines)."""
        if self.tty:
            self.out.write("\x1b[2J\x1b[H")
            self._draw()
        else:
            self.out.write("  ".join(c.ljust(w) for c, w in zip(COLUMNS, _WIDTHS, strict=True))
                           + "  AT\n")
        self.out.flush()

    def absorb(self, fc: FleetClient, msg: paho.MQTTMessage) -> bool:
        """Fold one message in; True when a device's row changed (counts as a change)."""
        device = fc.absorb(self.views, msg)
        if device is None:
            return False
        cells = row(self.views[device])
        if self._shown.get(device) == cells:
            return False
        self._shown[device] = cells
        self.changes += 1
        if self.tty:
            self._dirty = True
        else:
            self.out.write(plain(cells, time.strftime("%H:%M:%S", time.localtime(self.clock())))
                           + "\n")
            self.out.flush()
        return True

    def tick(self, interval: float, force: bool = False) -> None:
        """Redraw the terminal table if it changed and ``interval`` has passed."""
        if self.tty and self._dirty and (force or time.monotonic() - self._drawn_at >= interval):
            self._draw()

    def _draw(self) -> None:
        lines = render(self.views) if self.views else [*render({}), "(no device seen yet)"]
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        lines.append(f"-- {stamp}  {len(self.views)} devices, {self.changes} changes"
                     "  (Ctrl-C ends)")
        # Home, each line then "clear to end of line", then "clear to end of screen": the
        # table is rewritten in place, without the flicker of clearing first.
        self.out.write("\x1b[H" + "".join(f"{ln}\x1b[K\n" for ln in lines) + "\x1b[J")
        self.out.flush()
        self._dirty = False
        self._drawn_at = time.monotonic()


def watch(fc: FleetClient, out: TextIO, *, tty: bool, limits: WatchLimits) -> int:
    """Follow the fleet until a limit is reached or Ctrl-C; the number of changes shown."""
    view = Watch(out, tty=tty)
    fc.subscribe(fc.topics.all_available, fc.topics.all_state, fc.topics.all_telemetry)
    view.start()
    end = time.monotonic() + limits.duration if limits.duration else None
    try:
        while limits.count is None or view.changes < limits.count:
            left = limits.interval if end is None else min(limits.interval,
                                                           end - time.monotonic())
            if left <= 0:
                break
            try:
                msg = fc.messages.get(timeout=left)
            except queue.Empty:
                view.tick(limits.interval)
                continue
            view.absorb(fc, msg)
            view.tick(limits.interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way out
    view.tick(0.0, force=True)
    return view.changes

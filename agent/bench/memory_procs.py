"""Whole-process memory of real processes, from /proc (``mobizo-bench memory``'s probes).

``Rss`` and ``Pss`` come from ``/proc/PID/smaps_rollup`` (Pss splits shared pages, such as a
memory-mapped weights file or the runtime's libraries, between the processes that map them,
so the Pss of service + trainer is what they cost the board together); ``VmHWM`` from
``/proc/PID/status``; ``MemAvailable`` from ``/proc/meminfo``. The service is two processes
(its front and its engine child, agent/io/engine.py): :func:`tree_memory` adds up its tree.
A :class:`Sampler` polls a few processes in a thread and keeps the largest sums and the lowest
``MemAvailable`` seen.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MB = 1024 * 1024


def _fields_kb(path: Path, names: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:  # the process is gone
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            out[key] = int(rest.split()[0])
    return out


@dataclass(frozen=True)
class ProcMemory:
    """One process's memory now, in MB (0 for a process that is gone)."""

    rss_mb: float
    pss_mb: float
    hwm_mb: float

    def as_dict(self) -> dict[str, float]:
        return {"rss_mb": round(self.rss_mb, 1), "pss_mb": round(self.pss_mb, 1),
                "hwm_mb": round(self.hwm_mb, 1)}


def proc_memory(pid: int) -> ProcMemory:
    """Rss and Pss (smaps_rollup) and the high-water mark (VmHWM) of ``pid``."""
    roll = _fields_kb(Path(f"/proc/{pid}/smaps_rollup"), ("Rss", "Pss"))
    status = _fields_kb(Path(f"/proc/{pid}/status"), ("VmHWM",))
    return ProcMemory(roll.get("Rss", 0) / 1024, roll.get("Pss", 0) / 1024,
                      status.get("VmHWM", 0) / 1024)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the service's engine child), parents first."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):  # the task or the process is gone
                continue
    return out


def tree_memory(pid: int) -> dict[str, ProcMemory]:
    """The memory of ``pid`` (``front``), of its descendants together (``engine``: the
    service's engine child; zero when it has none) and of all of them (``total``)."""
    pids = process_tree(pid)
    front, rest = proc_memory(pids[0]), [proc_memory(p) for p in pids[1:]]

    def total(mems: Sequence[ProcMemory]) -> ProcMemory:
        return ProcMemory(sum(m.rss_mb for m in mems), sum(m.pss_mb for m in mems),
                          sum(m.hwm_mb for m in mems))

    return {"front": front, "engine": total(rest), "total": total([front, *rest])}


def mem_available_mb() -> float:
    """The kernel's estimate of memory available to a new workload, in MB."""
    return _fields_kb(Path("/proc/meminfo"), ("MemAvailable",)).get("MemAvailable", 0) / 1024


@dataclass
class Sampler:
    """Polls ``pids()`` every ``interval_s``; keeps the peak sums and the lowest MemAvailable.

    Args:
        pids: the processes to add up (read on every sample: one may start later).
        interval_s: seconds between samples.
    """

    pids: Callable[[], Sequence[int]]
    interval_s: float = 0.05
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    min_available_mb: float = float("inf")
    samples: int = 0
    peak_pss_by_pid: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = list(self.pids())
        mems = [proc_memory(pid) for pid in pids]
        for pid, mem in zip(pids, mems, strict=True):
            self.peak_pss_by_pid[pid] = max(self.peak_pss_by_pid.get(pid, 0.0), mem.pss_mb)
        self.peak_rss_mb = max(self.peak_rss_mb, sum(m.rss_mb for m in mems))
        self.peak_pss_mb = max(self.peak_pss_mb, sum(m.pss_mb for m in mems))
        self.min_available_mb = min(self.min_available_mb, mem_available_mb())
        self.samples += 1

    def start(self) -> Sampler:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Sampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self


def free_port() -> int:
    """A TCP port free on loopback now (the service binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def import_baseline_mb(python: str, modules: Sequence[str]) -> float:
    """VmRSS of a fresh interpreter after importing ``modules`` (what a process pays first)."""
    code = ("import importlib, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.1) -> None:
    """Poll ``check`` until it holds; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(interval_s)

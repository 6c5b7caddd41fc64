"""How the daemon starts a training burst so that the user's work always wins.

Two ways, chosen by whether ``systemd-run`` is usable from the daemon (see
:func:`agent.io.children.probe.usable_systemd_run`):

* **systemd scope** — ``systemd-run --scope --slice=mobizo-trainer.slice ...``: the trainer is
  moved into a transient scope in ``mobizo-trainer.slice`` (CPUWeight=idle, low IOWeight,
  MemoryMax from the board profile), so the kernel's cgroup controllers enforce the limits and
  an OOM kill hits the burst alone. ``systemd-run`` execs the trainer in place, so it stays a
  child of the daemon (pipes and ``wait()`` work as with a plain fork).
* **plain fork** — where systemd-run is missing, systemd is not PID 1, or the daemon may not
  create transient units (the default for the unprivileged ``mobizo`` user): the child lowers
  itself before exec: nice 19, ``SCHED_IDLE``, ``RLIMIT_AS`` (memory cap + headroom for virtual
  reservations), ``oom_score_adj`` 1000, and ``ionice -c 3`` when available.

Both paths set nice, SCHED_IDLE and oom_score_adj in the child (harmless twice, and the scope
path then also holds without cgroup v2 cpu.idle). This module is pure: it builds the command
line and a description of what the child applies; :func:`apply_in_child` is the one function
that touches the process, meant for ``subprocess.Popen(preexec_fn=...)``.

Usage by the daemon (threaded, so no ``preexec_fn``)::

    plan = build_trainer_launch(trainer_argv, limits, systemd_run=probe_result, burst_id=bid,
                                ionice=shutil.which("ionice"))
    proc = subprocess.Popen(plan.wrapped_argv(), ...)   # or Popen(plan.argv,
                                                        #   preexec_fn=plan.preexec())
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

MIB = 1024 * 1024
TRAINER_SLICE = "mobizo-trainer.slice"
_UNIT_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
LaunchMode = Literal["systemd-scope", "fork"]


@dataclass(frozen=True)
class TrainerLimits:
    """Resource limits of one training burst (from the board profile / agent config).

    Attributes:
        memory_max_mb: hard memory cap of the burst (cgroup MemoryMax, or the base of RLIMIT_AS).
        nice: scheduling niceness, 0..19 (19 = lowest priority).
        cpu_weight: cgroup v2 CPU weight 1..10000, or "idle" (cpu.idle, systemd >= 252).
        io_weight: cgroup v2 IO weight 1..10000.
        sched_idle: put the trainer in the SCHED_IDLE class (Linux; runs only on idle CPUs).
        address_space_headroom_mb: RLIMIT_AS = memory_max_mb + this, because virtual size is
            far above resident size (thread stacks, malloc arenas, mmapped .pte files).
        oom_score_adj: the trainer's OOM score adjustment (1000 = killed first).
        slice: the systemd slice for the scope.
    """

    memory_max_mb: int
    nice: int = 19
    cpu_weight: int | Literal["idle"] = "idle"
    io_weight: int = 10
    sched_idle: bool = True
    address_space_headroom_mb: int = 2048
    oom_score_adj: int = 1000
    slice: str = TRAINER_SLICE

    def __post_init__(self) -> None:
        if self.memory_max_mb < 64:
            raise ValueError(f"memory_max_mb={self.memory_max_mb}: a burst needs at least 64 MB")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice={self.nice}: the trainer may only lower its priority (0..19)")
        if self.cpu_weight != "idle" and not (
            isinstance(self.cpu_weight, int) and 1 <= self.cpu_weight <= 10000
        ):
            raise ValueError(f"cpu_weight={self.cpu_weight!r}: use 1..10000 or 'idle'")
        if not 1 <= self.io_weight <= 10000:
            raise ValueError(f"io_weight={self.io_weight}: use 1..10000")
        if not 0 <= self.oom_score_adj <= 1000:
            raise ValueError(f"oom_score_adj={self.oom_score_adj}: use 0..1000")
        if self.address_space_headroom_mb < 0:
            raise ValueError("address_space_headroom_mb must be >= 0")
        if not self.slice.endswith(".slice"):
            raise ValueError(f"slice={self.slice!r}: a slice unit name ends in .slice")


@dataclass(frozen=True)
class LaunchPlan:
    """What to exec and what the child applies to itself before exec.

    Attributes:
        mode: "systemd-scope" or "fork".
        argv: the full command line to pass to ``subprocess.Popen``.
        unit: the transient scope's name (systemd-scope mode), else None.
        nice: absolute niceness the child sets.
        sched_idle: whether the child switches to SCHED_IDLE.
        rlimit_as_bytes: RLIMIT_AS the child sets (fork mode), else None.
        oom_score_adj: written to /proc/self/oom_score_adj by the child.
    """

    mode: LaunchMode
    argv: tuple[str, ...]
    unit: str | None
    nice: int
    sched_idle: bool
    rlimit_as_bytes: int | None
    oom_score_adj: int

    def preexec(self) -> Callable[[], None]:
        """A ``preexec_fn`` for ``subprocess.Popen`` that applies this plan in the child.

        Only for single-threaded callers: ``preexec_fn`` can deadlock when the parent has
        other threads. A threaded daemon uses :meth:`wrapped_argv` instead.
        """
        return lambda: apply_in_child(self)

    def wrapped_argv(self, python: str = sys.executable) -> tuple[str, ...]:
        """``argv`` behind ``python -m agent.io.children.lower_exec``, which lowers, then execs.

        Thread-safe replacement for :meth:`preexec`: ``subprocess.Popen(plan.wrapped_argv())``.
        In scope mode the wrapper runs before systemd-run, so SCHED_IDLE and the OOM score
        are inherited by the trainer it execs.
        """
        opts = [f"--nice={self.nice}", f"--oom-score-adj={self.oom_score_adj}"]
        if self.sched_idle:
            opts.append("--sched-idle")
        if self.rlimit_as_bytes is not None:
            opts.append(f"--rlimit-as={self.rlimit_as_bytes}")
        return (python, "-m", "agent.io.children.lower_exec", *opts, "--", *self.argv)


def scope_unit_name(burst_id: str) -> str:
    """The transient scope's unit name for one burst: ``mobizo-trainer-<id>.scope``."""
    safe = _UNIT_SAFE.sub("_", burst_id)[:64] or "burst"
    return f"mobizo-trainer-{safe}.scope"


def build_trainer_launch(
    trainer_argv: Sequence[str],
    limits: TrainerLimits,
    *,
    systemd_run: str | None,
    burst_id: str,
    ionice: str | None = None,
) -> LaunchPlan:
    """Build the command line that starts one training burst under ``limits``.

    Args:
        trainer_argv: the trainer's own command line (absolute program path first).
        limits: the burst's resource limits.
        systemd_run: path of a *usable* systemd-run (probed by the caller), or None to fork.
        burst_id: identifies the burst; becomes part of the scope's unit name.
        ionice: path of ``ionice`` to put the fork-mode trainer in the idle IO class, or None.

    Returns:
        The launch plan; pass ``plan.argv`` and ``plan.preexec()`` to ``subprocess.Popen``.
    """
    if not trainer_argv:
        raise ValueError("trainer_argv is empty: pass the trainer's command line")
    if systemd_run:
        unit = scope_unit_name(burst_id)
        argv = [
            systemd_run,
            "--scope",
            "--quiet",
            "--collect",  # a failed scope is unloaded too, so unit names never pile up
            f"--unit={unit}",
            f"--slice={limits.slice}",
            f"--description=mobizo-agent training burst {burst_id}",
            f"--nice={limits.nice}",
            "--property=MemoryMax=" + f"{limits.memory_max_mb}M",
            "--property=MemorySwapMax=0",
            f"--property=CPUWeight={limits.cpu_weight}",
            f"--property=IOWeight={limits.io_weight}",
            "--",
            *trainer_argv,
        ]
        return LaunchPlan(
            mode="systemd-scope",
            argv=tuple(argv),
            unit=unit,
            nice=limits.nice,
            sched_idle=limits.sched_idle,
            rlimit_as_bytes=None,  # the cgroup caps resident memory; RLIMIT_AS would only misfire
            oom_score_adj=limits.oom_score_adj,
        )
    prefix = [ionice, "-c", "3"] if ionice else []
    return LaunchPlan(
        mode="fork",
        argv=(*prefix, *trainer_argv),
        unit=None,
        nice=limits.nice,
        sched_idle=limits.sched_idle,
        rlimit_as_bytes=(limits.memory_max_mb + limits.address_space_headroom_mb) * MIB,
        oom_score_adj=limits.oom_score_adj,
    )


def apply_in_child(plan: LaunchPlan) -> None:
    """Lower the calling process as ``plan`` says (runs in the forked child, before exec).

    Only ever lowers priority or limits, which needs no privilege. Failures to set the
    scheduling class or the OOM score are ignored (not every kernel or sandbox allows them);
    a failed RLIMIT_AS is not, because the memory cap is what protects the user.
    """
    os.setpriority(os.PRIO_PROCESS, 0, plan.nice)
    if plan.sched_idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if plan.rlimit_as_bytes is not None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = plan.rlimit_as_bytes
        if hard != resource.RLIM_INFINITY:
            cap = min(hard, cap)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
        f.write(str(plan.oom_score_adj))

"""One training burst (or evaluation) as a child process, watched without blocking the daemon.

The daemon never imports torch or executorch: the trainer (``python -m agent train``) and the
evaluator (``python -m agent eval``) run as children, lowered by
:mod:`agent.io.children.launch` (nice 19, SCHED_IDLE, memory cap, OOM score 1000; a
systemd scope in ``mobizo-trainer.slice`` where that works), so an OOM kill or a crash hits
the child alone. The daemon's main loop calls :meth:`ChildProcess.poll` every tick; progress comes
from the trainer's ``--metrics`` JSON lines, tailed incrementally.

Stopping is cooperative first: SIGTERM makes the trainer finish its step, checkpoint and exit
with 75 (resumable); a child that does not exit within the bound is SIGKILLed — the checkpoint
written by the last finished step (two generations, atomic) is what the next burst resumes.
Every time here is monotonic (``clock``): a wall clock set by NTP must not stretch or cut a
deadline. SIGKILL also ends a SIGSTOPped child, which SIGTERM cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.core.train_job import EXIT_BAD_INPUT as EXIT_BAD_INPUT
from agent.core.train_job import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from agent.core.train_job import EXIT_OK as EXIT_OK
from agent.io.children.launch import LaunchPlan, TrainerLimits, build_trainer_launch

log = logging.getLogger(__name__)



def describe_exit(returncode: int) -> str:
    """A human reason for a child's exit status (negative = killed by that signal)."""
    if returncode == EXIT_OK:
        return "finished"
    if returncode == EXIT_INTERRUPTED:
        return "stopped with a checkpoint (resumable)"
    if returncode == EXIT_BAD_INPUT:
        return "refused its input (exit 2)"
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return f"killed by {name} (OOM killer or kill -9)"
        return f"killed by {name}"
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        # a wrapper (systemd-run, a shell) reports a signal death as 128 + N
        return f"exit {returncode} ({signal.Signals(returncode - 128).name})"
    return f"crashed (exit {returncode})"


@dataclass
class MetricsTail:
    """Reads JSON lines appended to a file since the last call (partial lines wait)."""

    path: Path
    offset: int = 0
    _partial: bytes = b""

    def read(self) -> list[dict[str, Any]]:
        """New complete JSON objects; garbled lines are skipped."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when data ended with a newline
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclass
class ChildProcess:
    """A lowered child process with its stdout+stderr in ``log_path``.

    Args:
        name: "train" or "eval" (for logs).
        argv: the child's own command line (python first).
        log_path: where its output goes (kept for the exit reason).
        limits: resource limits, or None to run it plainly.
        systemd_run: a usable systemd-run path (scope mode), or None (fork mode).
        job_id: names the scope unit.
        capped: apply the memory cap (False: ``[training].memory_max_mb = 0``).
        env: the child's environment (default: the daemon's).
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    limits: TrainerLimits | None = None
    systemd_run: str | None = None
    job_id: str = "burst"
    capped: bool = True
    env: dict[str, str] | None = None
    clock: Callable[[], float] = time.monotonic
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    returncode: int | None = None
    term_sent_at: float | None = None
    kill_reason: str | None = None
    plan: LaunchPlan | None = field(default=None, repr=False)

    def start(self) -> None:
        """Launch the child; raises OSError if it cannot be started."""
        argv = list(self.argv)
        if self.limits is not None:
            self.plan = build_trainer_launch(argv, self.limits, systemd_run=self.systemd_run,
                                             burst_id=self.job_id, ionice=shutil.which("ionice"))
            if not self.capped:
                self.plan = without_rlimit(self.plan)
            argv = list(self.plan.wrapped_argv(python=sys.executable))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, close_fds=True, start_new_session=True,
            )
        self.started_at = self.clock()
        log.info("%s child started (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    def poll(self) -> int | None:
        """The exit status once it has exited (reaped), else None."""
        if self.proc is None:
            return None
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM to the child; it checkpoints after the current step)."""
        if self.running and self.proc is not None:
            if self.term_sent_at is None:
                self.term_sent_at = self.clock()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def age(self) -> float:
        """Seconds since it was started (0 before :meth:`start`)."""
        return self.clock() - self.started_at if self.proc is not None else 0.0

    def kill(self, reason: str | None = None) -> None:
        """SIGKILL its whole process group (the child runs in its own session).

        Args:
            reason: why, kept in :attr:`kill_reason` for the exit's description.
        """
        if self.running and self.proc is not None:
            if reason is not None and self.kill_reason is None:
                self.kill_reason = reason
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()

    def overdue(self, grace_s: float) -> bool:
        """SIGTERM was sent more than ``grace_s`` ago and it still runs."""
        return (self.running and self.term_sent_at is not None
                and self.clock() - self.term_sent_at > grace_s)

    def wait(self, timeout: float) -> int | None:
        """Block up to ``timeout`` for the exit; the status or None."""
        if self.proc is None:
            return None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit status."""
        if not self.running:
            return self.poll()
        self.terminate()
        code = self.wait(grace_s)
        if code is None:
            log.warning("%s child %s did not stop within %.0f s; killing it", self.name,
                        self.pid, grace_s)
            self.kill()
            code = self.wait(10.0)
        return code

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of its output (for the failure reason)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def last_error_line(self) -> str:
        """The last line that looks like an error message, for status and logs."""
        for line in reversed(self.log_tail().splitlines()):
            text = line.strip()
            if text.startswith(("error:", "Traceback")) or "Error" in text.split(":")[0]:
                return text[:300]
        return ""


class TrainingLimitsSource(Protocol):
    """The part of ``[training]`` that bounds the trainer child (agent.config.training's model
    has these fields; io does not import config, so it names them here)."""

    @property
    def memory_max_mb(self) -> int: ...

    @property
    def nice(self) -> int: ...

    @property
    def sched_idle(self) -> bool: ...


def limits_from_training(training: TrainingLimitsSource) -> TrainerLimits:
    """TrainerLimits from ``[training]`` (memory_max_mb, nice, sched_idle).

    A memory cap of 0 ("no cap") still lowers priority; pass ``capped=False`` to
    :class:`ChildProcess` so the RLIMIT_AS is left off.
    """
    cap = int(training.memory_max_mb)
    return TrainerLimits(memory_max_mb=max(cap, 64), nice=int(training.nice),
                         sched_idle=bool(training.sched_idle))


def without_rlimit(plan: LaunchPlan) -> LaunchPlan:
    """The plan without its RLIMIT_AS (for an uncapped burst)."""
    return dataclasses.replace(plan, rlimit_as_bytes=None)

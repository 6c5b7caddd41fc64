"""The inference engine in its own process: the service's program, seen from the service.

ExecuTorch's pybindings hold the GIL for a whole ``method.execute`` (1.5.1), so in one process
every HTTP, control or watcher thread that gives the GIL up for a syscall waits for a whole
prefill chunk or decode step to get it back (measured on the 110M fp32 bundle: a 2 ms sleep
woke after 77 ms p50 / 123 ms p99 beside a prefill). Here the program runs in a child
(``python -m agent.io.engine_child``, :mod:`agent.io.engine_child`) and the service's
generation thread waits on a socket, GIL released, while it computes. The service process
itself never imports torch or ExecuTorch (this module must not either), so when the engine
exits during a training burst the service keeps only its light front (docs/architecture.md,
"Memory on the board").

:class:`EngineProgram` is the generator's ``InferProgramLike``. The wire is a socketpair with
framed, pickled messages (``multiprocessing.connection``; both ends are ours, nothing else can
reach it):

- child → parent once: ``("ready", {max_context, vocab_size, load_s, threads, pid})`` or
  ``("error", kind, text)``, a load error whose text passes through unchanged (a
  :class:`~agent.errors.BundleError` says what to do, and the service refuses the bundle with it);
- parent → child: ``("forward", ids, start_pos, lora_b or None)`` → ``("ok", logits)`` or
  ``("error", kind, text)``. LoRA-B (6 MB at 110M) travels only when the caller passes
  another array than last time (identity, with a reference kept), never per token;
  ``("reset",)`` → ``("ok", None)``; ``("exit",)``: the child returns.

An engine that dies (OOM killer, ``kill -9``, a crash) fails the call in progress with
:class:`EngineGone`, whose message names the pid and the signal; the owner
(agent/services/inference/residency.py) then starts a new one for the next request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BundleError

log = logging.getLogger(__name__)

CHILD_MODULE = "agent.io.engine_child"


class EngineError(RuntimeError):
    """The engine failed a call for a reason of its own (not a bad argument or bundle)."""


class EngineGone(EngineError):
    """The engine process is gone (killed, crashed, or it closed the pipe)."""


def describe_exit(returncode: int | None) -> str:
    """A human reason for an engine's exit status (negative: killed by that signal)."""
    if returncode is None:
        return "it closed its end of the pipe and still runs"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if returncode == -signal.SIGKILL:
            return f"killed by {name} (the OOM killer or kill -9)"
        return f"killed by {name}"
    return f"exited with status {returncode}"


# error kinds a child may report, raised here as the same type (ValueError: the positions or
# the adapter's length; BundleError: what to do about the bundle)
_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "BundleError": BundleError}


def _raise_reported(kind: str, text: str) -> None:
    raise _ERRORS.get(kind, EngineError)(text)


def _reap(proc: subprocess.Popen[bytes], conn: Connection, wait_s: float) -> int:
    """Close the pipe (the child's ``recv`` sees EOF and returns), wait ``wait_s``, then kill."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(("exit",))
    with contextlib.suppress(OSError):
        conn.close()
    try:
        return proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        log.warning("the inference engine (pid %d) did not exit within %.1f s; killing it",
                    proc.pid, wait_s)
        proc.kill()
        return proc.wait()


class EngineProgram:
    """``agent.io.runtime.InferProgram`` run by a child process (module docstring).

    Args:
        bundle_dir: the model bundle.
        threads: the engine's ExecuTorch thread pool (None: one per core), sized in the child
            before its program loads.
        python: the interpreter that runs the child (the service's own).
        load_timeout_s: longest wait for the child to say it is ready.
        exit_wait_s: how long :meth:`close` waits for the child before it kills it.

    Raises:
        BundleError: the child could not load the bundle (its message, unchanged).
        EngineGone: the child died or never answered while loading.
    """

    def __init__(self, bundle_dir: Path, threads: int | None = None, *,
                 python: str = sys.executable, load_timeout_s: float = 600.0,
                 exit_wait_s: float = 5.0) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.exit_wait_s = exit_wait_s
        parent_end, child_end = socket.socketpair()
        argv = [python, "-m", CHILD_MODULE, "--fd", str(child_end.fileno()),
                "--bundle", str(self.bundle_dir), "--parent", str(os.getpid())]
        if threads:
            argv += ["--threads", str(threads)]
        try:
            # both to the service's stderr (the journal): its stdout is the service's own
            # (``serving on HOST:PORT`` is read from it), the runtime's chatter stays off it
            self._proc = subprocess.Popen(argv, pass_fds=(child_end.fileno(),),
                                          stdin=subprocess.DEVNULL, stdout=2)
        finally:
            child_end.close()
        self._conn = Connection(parent_end.detach())
        # a program dropped without close() still takes its child with it
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._conn, exit_wait_s)
        self._lora: Any = None  # the array last sent (kept: its identity says "unchanged")
        self.lora_sent = 0  # adapters sent so far (once per adapter, not per token)
        try:
            info = self._await_ready(load_timeout_s)
        except BaseException:
            self.close()
            raise
        self.max_context = int(info["max_context"])
        self.vocab_size = int(info["vocab_size"])
        self.load_s = float(info["load_s"])
        self.threads = int(info["threads"])

    @property
    def pid(self) -> int:
        """The engine process's id."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the engine process still runs (and was not closed)."""
        return self._finalizer.alive and self._proc.poll() is None

    def _await_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self._conn.poll(0.2):
            if self._proc.poll() is not None:
                raise self._gone("while loading the bundle")
            if time.monotonic() > deadline:
                raise EngineGone(f"the inference engine (pid {self.pid}) did not load "
                                 f"{self.bundle_dir} within {timeout_s:.0f} s")
        reply = self._receive("while loading the bundle")
        if reply[0] == "error":
            _raise_reported(reply[1], reply[2])
        return dict(reply[1])

    def _gone(self, when: str) -> EngineGone:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(1.0)  # its exit status names what happened
        return EngineGone(f"the inference engine (pid {self.pid}) died {when}: "
                          f"{describe_exit(self._proc.poll())}")

    def _receive(self, when: str) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._gone(when) from exc

    def _call(self, message: tuple[Any, ...], when: str) -> Any:
        if not self._finalizer.alive:
            raise EngineGone(f"the inference engine (pid {self.pid}) was closed")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            raise self._gone(when) from exc
        reply = self._receive(when)  # blocks in a read: the GIL is free meanwhile
        if reply[0] == "error":
            _raise_reported(reply[1], reply[2])
        return reply[1]

    def reset(self) -> None:
        """Start a new sequence (the engine's program says what that means)."""
        self._call(("reset",), "during a reset")

    def forward(self, token_ids: Sequence[int], start_pos: int,
                lora_b: np.ndarray) -> np.ndarray:
        """Feed ``token_ids`` at ``start_pos..``; the float32 logits [vocab] after the last.

        ``lora_b`` is sent only when it is another array than the last call's: an adapter
        is replaced, never changed in place (agent/services/inference/hotswap.py).
        """
        ids = [int(i) for i in token_ids]
        changed = lora_b is not self._lora
        lora = np.ascontiguousarray(lora_b, dtype=np.float32) if changed else None
        logits = self._call(("forward", ids, int(start_pos), lora), "during a forward")
        if changed:
            self._lora = lora_b  # after the child took it: a refused adapter is sent again
            self.lora_sent += 1
        return np.asarray(logits, dtype=np.float32)

    def close(self) -> int | None:
        """Let the engine exit, waiting ``exit_wait_s`` before a kill; its exit status."""
        if not self._finalizer.alive:
            return self._proc.returncode
        self._finalizer()
        return self._proc.returncode

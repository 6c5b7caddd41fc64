"""The service's program, released while a training burst runs and loaded again on demand.

One copy of the weights on the board (docs/architecture.md, "Memory on the board"): a burst
runs only while the user is idle, so the daemon asks the service to let its program go
(``POST /v1/admin/program {"resident": false}``) before it starts the trainer. The service
then holds no packed weights; the trainer holds the only copy.

A request that arrives meanwhile is answered: the generation worker holds :attr:`lock` for a
whole request, and the first ``reset``/``forward`` of a released program loads it again (what
the request waits for is :attr:`ReleasableProgram.last_load_s`, reported in ``/health`` and by
``mobizo-bench memory``). The same request moves ``last_request_at``, so the daemon's policy
sees the user is back and stops the burst within one step, as it always did. A release
waits for the request in progress (the program is never dropped in the middle of one) and
forgets the prompt cache, whose keys and values went with the program.

With the engine in its own process (agent/io/engine.py, ``[inference] engine = "process"``),
releasing the program is the engine child exiting: :meth:`ReleasableProgram.release` closes it
and waits for it (bounded, then a kill), so its memory is gone before the trainer loads. An
engine that dies (the OOM killer, ``kill -9``) fails the request in progress with a 500 naming
what happened; the program is then dropped like a release (the prompt cache forgets), and the
next request starts a new engine (counted in ``restarts``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.io.engine import EngineGone

log = logging.getLogger(__name__)

# How long a release waits for the request in progress. Short: the daemon's client gives up
# after its own [service] request_timeout_s (5 s), and a request in progress means the user
# is active, so the burst is about to be refused anyway.
RELEASE_WAIT_S = 2.0


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: return freed heap pages to the kernel (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the allocator keeps them
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ReleasableProgram:
    """An inference program that can be dropped and loaded again (the generator's
    ``InferProgramLike``).

    Args:
        load: builds the program (``agent.io.runtime.InferProgram`` for the bundle).
        on_release: told after each release (the generator's prompt cache forgets).
        clock: seconds for the load timings.
    """

    def __init__(self, load: Callable[[], Any], *, on_release: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._load_program = load
        self._on_release = on_release
        self._clock = clock
        # held by the generation worker for a whole request, and by release(): a program is
        # never dropped between two forwards of one request
        self.lock = threading.RLock()
        self.loads = self.releases = self.restarts = 0
        self.last_load_s: float | None = None
        self.released_at: float | None = None  # wall time of the last release, if released
        self._program: Any = None
        program = self._ensure()
        self.max_context = int(program.max_context)
        self.vocab_size = int(program.vocab_size)

    @property
    def resident(self) -> bool:
        """Whether the program is loaded now (an engine that died is not)."""
        return self._program is not None and bool(getattr(self._program, "alive", True))

    def _ensure(self) -> Any:
        program = self._program
        if program is not None and not getattr(program, "alive", True):
            with self.lock:  # the engine died between requests: this one gets a new engine
                if self._program is program:
                    self._dead(program, "between requests")
            program = self._program
        if program is None:
            with self.lock:
                if self._program is None:
                    t0 = self._clock()
                    self._program = self._load_program()
                    self.last_load_s = self._clock() - t0
                    self.loads += 1
                    if self.released_at is not None:
                        log.info("program loaded again in %.2f s (released %.0f s before)",
                                 self.last_load_s, time.time() - self.released_at)
                    self.released_at = None
                program = self._program
        return program

    def _dead(self, program: Any, when: str) -> None:
        """Drop an engine that died (the caller holds :attr:`lock`); the next call loads."""
        self.restarts += 1
        self._drop()
        log.warning("the inference engine (pid %s) died %s; the next request starts a new one",
                    getattr(program, "pid", "?"), when)

    def reset(self) -> None:
        program = self._ensure()
        try:
            program.reset()
        except EngineGone:
            with self.lock:
                if self._program is program:
                    self._dead(program, "during a reset")
            raise

    def forward(self, token_ids: Sequence[int], start_pos: int,
                lora_b: np.ndarray) -> np.ndarray:
        program = self._ensure()
        try:
            return program.forward(token_ids, start_pos, lora_b)  # type: ignore[no-any-return]
        except EngineGone:  # this request fails (a 500 naming it); the next one reloads
            with self.lock:
                if self._program is program:
                    self._dead(program, "during a request")
            raise

    def _drop(self) -> None:
        """Let the program go (the caller holds :attr:`lock`): an engine child exits and is
        waited for; an in-process program is collected and the heap trimmed. Either way its
        memory is gone when this returns, and the prompt cache forgets."""
        program, self._program = self._program, None
        close = getattr(program, "close", None)
        if close is not None:
            close()
        del program, close
        self._on_release()
        # the runtime frees the packed weights when the last method goes; collect now
        # and hand glibc's free pages back, so they are gone before the trainer loads
        gc.collect()
        _trim_heap()

    def close(self, timeout_s: float = RELEASE_WAIT_S) -> None:
        """Let the program go for good (the service stops). A request still running after
        ``timeout_s`` keeps it: an engine child then dies with the service."""
        if not self.lock.acquire(timeout=timeout_s):
            return
        try:
            if self._program is not None:
                self._drop()
        finally:
            self.lock.release()

    def load(self) -> float:
        """Load the program now if it is released; seconds it took (0.0 when resident)."""
        was = self.loads
        self._ensure()
        return float(self.last_load_s or 0.0) if self.loads != was else 0.0

    def release(self, timeout_s: float = RELEASE_WAIT_S) -> bool:
        """Drop the program once the request in progress ends; False if that took longer than
        ``timeout_s`` (nothing released: the user is active, the burst will not start)."""
        if not self.lock.acquire(timeout=timeout_s):
            return False
        try:
            if self._program is None:
                return True
            self._drop()
            self.releases += 1
            self.released_at = time.time()
        finally:
            self.lock.release()
        log.info("program released (a training burst runs); the next request loads it again")
        return True

    def replace(self, load: Callable[[], Any]) -> float:
        """Serve another bundle's program: drop this one, then load ``load``'s; seconds it took.

        The old program goes first, so the board never holds two copies of the weights; the
        caller has already let the requests on it finish (bundle_switch.ServingGate). If the
        new one fails to load, the old loader is kept (the next request loads the old program
        again) and the error is raised.
        """
        with self.lock:  # no request is between two forwards while the program changes
            self._drop()
            t0 = self._clock()
            program = load()
            self._load_program, self._program = load, program
            self.last_load_s = self._clock() - t0
            self.loads += 1
            self.released_at = None
            self.max_context = int(program.max_context)
            self.vocab_size = int(program.vocab_size)
        return self.last_load_s

    def status(self) -> dict[str, Any]:
        """For ``/health``: resident, loads, releases, engine restarts, the last load's
        seconds and the engine's pid (None in process or released)."""
        return {"resident": self.resident, "loads": self.loads, "releases": self.releases,
                "restarts": self.restarts, "last_load_s": self.last_load_s,
                "released_at": self.released_at,
                "engine_pid": getattr(self._program, "pid", None)}

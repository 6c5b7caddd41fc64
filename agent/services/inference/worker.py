"""One generation thread serving a bounded FIFO queue.

The HTTP threads tokenize and validate, then :meth:`GenerationWorker.submit` a :class:`Job`;
a full queue is refused at once (the caller answers 503 + Retry-After), so the listener never
waits on generation. The worker takes jobs in order, captures the adapter for the job at
dequeue time (hot-swap happens between jobs), streams text pieces into the job's event queue,
and records the finished interaction in the store (non-blocking; the ticket travels back so
the HTTP thread can answer once the row is committed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from agent.io.store import InteractionStore
from agent.io.store_records import Interaction
from agent.io.store_writer import Ticket
from agent.services.inference.generation import GenerationResult, Generator
from agent.services.inference.hotswap import AdapterSlot
from agent.services.inference.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One request on its way through the queue."""

    id: str
    kind: str  # "chat" | "completion"
    prompt_ids: Sequence[int]
    params: SamplingParams
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    truncated_messages: int = 0  # oldest turns dropped to fit the context
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class JobDone:
    result: GenerationResult
    adapter_version: str
    latency_ms: float
    ticket: Ticket | None
    started_at: float  # wall time the adapter was captured
    finished_at: float


class GenerationWorker:
    """Bounded FIFO of :class:`Job` and the single thread that runs them."""

    def __init__(self, generator: Generator, slot: AdapterSlot, store: InteractionStore | None,
                 *, max_queue: int = 16, clock: Callable[[], float] = time.time,
                 program_lock: AbstractContextManager[Any] | None = None) -> None:
        self.generator = generator
        # held for a whole request: the program is not released between its forwards
        self._program_lock = program_lock or nullcontext()
        self.slot = slot
        self.store = store
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._clock = clock
        self.busy = False
        self.served = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self.busy else 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        while True:  # drop what is waiting; their HTTP threads get an error
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.events.put(("error", "the service is shutting down"))
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False at once if the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self.busy = True
            try:
                with self._program_lock:
                    self._run(job)
                self.served += 1
            except Exception as exc:  # a failed request must not take the worker down
                self.failed += 1
                log.exception("generation failed for %s", job.id)
                job.events.put(("error", f"generation failed: {exc}"))
            finally:
                self.busy = False

    def _run(self, job: Job) -> None:
        version, lora_b = self.slot.current()  # captured once: hot-swap happens between jobs
        started = self._clock()
        job.events.put(("start", version))
        result = self.generator.generate(
            job.prompt_ids, job.params, lora_b,
            on_delta=lambda text: job.events.put(("delta", text)),
            cancelled=job.cancelled.is_set, cache_key=version,  # a swap misses the cache
        )
        latency_ms = (time.perf_counter() - job.enqueued_at) * 1000
        ticket = None
        if self.store is not None and result.finish_reason != "cancelled":
            ticket = self.store.record(Interaction(
                id=job.id, kind=job.kind, messages=job.messages, prompt=job.prompt,
                response=result.text, adapter_version=version, latency_ms=latency_ms,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            ))
        job.events.put(("done", JobDone(result, version, latency_ms, ticket, started,
                                        self._clock())))

"""Long fleet commands as jobs: accepted once, queued, run one at a time, published retained.

A job is persisted in ``fleet.db`` before it is announced, so a QoS 1 redelivery (or a repeated
``job_id``) is answered with where the job already is and never runs twice; after a restart,
jobs left open are recovered (:func:`agent.core.jobs.recover`). Each job runs in a helper
thread so its deadline can be enforced; its updates go to ``<prefix>/jobs/<id>``, retained,
and a late progress report never overwrites the terminal update on the broker.

The controller can cancel a job (:meth:`FleetJobs.cancel`: a QUEUED one never runs, a running
one is asked to stop and ends CANCELED, or REMOVED) and acknowledge terminal ones
(:meth:`FleetJobs.ack`): an acknowledged or removed job's retained message is cleared (an
empty retained publish), now or at the next connect. With a persistent MQTT session a command
may be delivered twice (a QoS 1 redelivery after a reconnect): a long command is still run
once, since its job id is known (``fleet.db``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.core import jobs as jobsm
from agent.core.command_wire import AckJobsOutput
from agent.core.commands import (
    COMMANDS,
    CommandHandler,
    CommandRequest,
    CommandResult,
    ErrorInfo,
    ParsedCommand,
    error_of,
    execute,
)
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Inbound
from agent.services.fleet.session import FleetSession, wire_bytes

log = logging.getLogger(__name__)

_TERMINAL_JOBS_KEPT = 1000  # job ids remembered for duplicate detection


class _JobRun:
    """JobContext for one running job: progress goes to the store and ``jobs/<id>``."""

    def __init__(self, jobs: FleetJobs, job: jobsm.Job) -> None:
        self._jobs = jobs
        self.job = job
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._last_pub = 0.0
        self.cancel: jobsm.JobStatus | None = None  # CANCELED or REMOVED once asked
        self.cancel_at = 0.0  # monotonic time of the cancel

    def request_cancel(self, remove: bool) -> None:
        """Ask the handler to stop (it polls :meth:`should_stop`); the runner ends the job."""
        if self.cancel is None:
            self.cancel = jobsm.JobStatus.REMOVED if remove else jobsm.JobStatus.CANCELED
            self.cancel_at = time.monotonic()
        self.stop.set()

    def report(self, fraction: float | None, message: str) -> None:
        with self._lock:
            if self.job.terminal:
                return
            self.job = jobsm.transition(
                self.job,
                jobsm.JobStatus.IN_PROGRESS,
                now=self._jobs.clock(),
                progress=fraction,
                message=message,
            )
            job = self.job
            # Progress is persisted every time but published at most ~5/s.
            publish = time.monotonic() - self._last_pub > 0.2
            if publish:
                self._last_pub = time.monotonic()
        self._jobs.store.save_job(job)
        if publish:
            self._jobs.publish(job)

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def finish(self, job: jobsm.Job) -> None:
        with self._lock:
            self.job = job


class FleetJobs:
    """The job queue and its runner thread (:meth:`run_forever`).

    Args:
        config: the ``[mqtt]`` section (job timeout, queue bound, QoS).
        session: the session to publish job updates in.
        store: where jobs persist.
        handler: the daemon's side that runs the commands.
        clock: wall clock for timestamps and deadlines.
        stop: set when the link stops.
        on_finished: called after a job's terminal update (a finished job usually changed
            the device's state, so the link publishes it now).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        session: FleetSession,
        store: FleetStore,
        handler: CommandHandler,
        clock: Callable[[], float],
        stop: threading.Event,
        on_finished: Callable[[], None],
    ) -> None:
        self.config = config
        self.session = session
        self.store = store
        self.handler = handler
        self.clock = clock
        self._stop = stop
        self._on_finished = on_finished
        self._queue: queue.Queue[str] = queue.Queue()
        self._stale: set[str] = set()  # updates not yet published (offline)
        self._publish_lock = threading.Lock()
        self._terminal_published: dict[str, None] = {}  # insertion-ordered, bounded
        # A cancel and the runner's start of a job read-modify-write the same record.
        self._state_lock = threading.Lock()
        self._current: _JobRun | None = None

    def recover(self) -> None:
        """After a restart: fail what cannot resume (published on connect), requeue the rest."""
        now = self.clock()
        for job in self.store.open_jobs():
            recovered = jobsm.recover(job, now)
            if recovered is not job:
                self.store.save_job(recovered)
                self._stale.add(recovered.job_id)
                log.warning("job %s after restart: %s", job.job_id, recovered.status)
            else:
                self._queue.put(job.job_id)

    def wake(self) -> None:
        """Wake the runner thread so it sees the stop event."""
        self._queue.put("")  # an empty id is never a job

    def submit(self, parsed: ParsedCommand, msg: Inbound) -> CommandResult:
        """Accept (or reject, or recognise a duplicate of) a long command; the reply to send."""
        req = parsed.request
        job_id = (
            req.job_id
            or req.request_id
            or (msg.correlation_data.hex()[:128] if msg.correlation_data else uuid.uuid4().hex)
        )
        now = self.clock()
        job = jobsm.new_job(
            job_id,
            parsed.spec.name,
            parsed.args.model_dump(mode="json"),
            request_id=req.request_id,
            now=now,
            timeout_s=self.config.job_timeout_s,
        )
        existing = self.store.insert_job(job)
        if existing is not None:
            # A QoS 1 redelivery or a repeated id: never run twice; report where it is.
            return jobsm.job_result(
                parsed, existing, device_id=self.session.device_id, now=now, duplicate=True
            )
        if self._queue.qsize() >= self.config.max_queued_jobs:
            job = jobsm.transition(
                job,
                jobsm.JobStatus.REJECTED,
                now=now,
                message="too many queued jobs",
                error=ErrorInfo(
                    code="rejected",
                    message=f"{self._queue.qsize()} jobs already queued; retry later",
                ),
            )
            self.store.save_job(job)
            self.publish(job)
        else:
            self.publish(job)  # before the runner can move it on: retained order matters
            self._queue.put(job_id)
        self.store.prune_terminal(_TERMINAL_JOBS_KEPT)
        return jobsm.job_result(parsed, job, device_id=self.session.device_id, now=now)

    def publish(self, job: jobsm.Job) -> bool:
        """Publish a job update (retained). Serialised, and never after its terminal update,
        so a late progress report cannot overwrite the final state on the broker."""
        with self._publish_lock:
            if job.job_id in self._terminal_published and not job.terminal:
                return True
            ok = (
                self.session.transport.publish(
                    self.session.topics.job(job.job_id),
                    # acknowledged (or removed): an empty retained message clears the topic
                    b"" if job.acked else wire_bytes(job.view()),
                    qos=self.config.qos,
                    retain=True,
                )
                is not None
            )
            if not ok:
                self._stale.add(job.job_id)
            elif job.terminal:
                self._terminal_published[job.job_id] = None
                while len(self._terminal_published) > _TERMINAL_JOBS_KEPT:
                    self._terminal_published.pop(next(iter(self._terminal_published)))
            return ok

    def publish_stale(self) -> None:
        """Job updates that could not be published while offline, oldest change first."""
        stale = [j for j in map(self.store.get_job, list(self._stale)) if j is not None]
        for job in sorted(stale, key=lambda j: j.updated_at):
            if self.publish(job):
                self._stale.discard(job.job_id)

    def cancel(self, job_id: str, *, remove: bool = False) -> jobsm.Job:
        """Cancel a QUEUED job (terminal now) or ask a running one to stop (terminal once its
        handler returns, or after ``job_cancel_grace_s``); the job as it stands.

        Raises:
            KeyError: no such job here.
            jobsm.InvalidTransition: the job is already terminal.
        """
        with self._state_lock:
            job = self.store.get_job(job_id)
            if job is None:
                raise KeyError(job_id)
            run = self._current
            if run is not None and run.job.job_id == job_id and not run.job.terminal:
                run.request_cancel(remove)
                return jobsm.transition(run.job, jobsm.JobStatus.IN_PROGRESS, now=self.clock(),
                                        message="cancel requested; stopping")
            job = jobsm.canceled(job, now=self.clock(), remove=remove)
            if remove:
                job = job.model_copy(update={"acked": True})
            self.store.save_job(job)
        self._publish_terminal(job)
        return job

    def ack(self, job_ids: list[str]) -> AckJobsOutput:
        """The controller has these terminal jobs' outcomes: clear their retained messages."""
        out = AckJobsOutput()
        for job_id in dict.fromkeys(job_ids):
            job = self.store.get_job(job_id)
            if job is None:
                # Pruned, or from before a reinstall: its topic is ours, clearing is harmless.
                self.session.transport.publish(self.session.topics.job(job_id), b"",
                                               qos=self.config.qos, retain=True)
                out.unknown.append(job_id)
            elif not job.terminal:
                out.not_terminal.append(job_id)
            else:
                job = job.model_copy(update={"acked": True})
                self.store.save_job(job)
                if not self.publish(job):
                    self._stale.add(job_id)  # cleared at the next connect
                out.cleared.append(job_id)
        return out

    def _publish_terminal(self, job: jobsm.Job) -> None:
        # A REMOVED job: the terminal update first (a controller following it live sees why),
        # then the clear.
        if job.acked:
            self.publish(job.model_copy(update={"acked": False}))
        self.publish(job)
        self._on_finished()

    def run_forever(self) -> None:
        """The job thread: run queued jobs one at a time until the link stops."""
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001
                log.exception("job %s: unexpected error", job_id)

    def _start(self, job_id: str) -> _JobRun | None:
        """Move a queued job to IN_PROGRESS (None: nothing to run), under the state lock."""
        with self._state_lock:
            job = self.store.get_job(job_id)
            if job is None or job.terminal:
                return None
            late = jobsm.timed_out(job, self.clock())
            if late is not None:
                self._finish(late)
                return None
            job = jobsm.transition(
                job, jobsm.JobStatus.IN_PROGRESS, now=self.clock(), progress=0.0,
                message="started"
            )
            self.store.save_job(job)
            self._current = _JobRun(self, job)
        self.publish(job)
        return self._current

    def _run(self, job_id: str) -> None:
        run = self._start(job_id)
        if run is None:
            return
        try:
            self._run_job(run)
        finally:
            with self._state_lock:
                self._current = None

    def _run_job(self, run: _JobRun) -> None:
        job = run.job
        job_id = job.job_id
        spec = COMMANDS[job.command]
        parsed = ParsedCommand(spec, _request_of(job), spec.args_model.model_validate(job.args))
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["output"] = execute(self.handler, parsed, run)
            except BaseException as exc:  # noqa: BLE001 - reported as the job's error
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"job-{job_id}", daemon=True)
        worker.start()
        # the wait counts on the monotonic clock: an NTP step must not end or stretch it
        until = time.monotonic() + max(0.0, job.deadline - self.clock())
        grace = self.config.job_cancel_grace_s
        while worker.is_alive() and time.monotonic() < until and not self._stop.is_set():
            if run.cancel is not None and time.monotonic() > run.cancel_at + grace:
                break  # asked to stop and did not: CANCELED all the same (said below)
            worker.join(0.1)
        now = self.clock()
        current = run.job
        if run.cancel is not None and not self._stop.is_set():
            final = self._canceled_final(run, outcome, now, stopped=not worker.is_alive())
        elif worker.is_alive():
            run.stop.set()
            if self._stop.is_set():
                return  # shutting down: left IN_PROGRESS, failed explicitly at next start
            final = jobsm.timed_out(current, now) or jobsm.transition(
                current,
                jobsm.JobStatus.TIMED_OUT,
                now=now,
                error=ErrorInfo(code="timed_out", message="deadline passed"),
            )
        elif "error" in outcome:
            err = error_of(outcome["error"])
            status = jobsm.JobStatus.REJECTED if err.code == "rejected" else jobsm.JobStatus.FAILED
            final = jobsm.transition(current, status, now=now, message=err.message, error=err)
        else:
            final = jobsm.transition(
                current,
                jobsm.JobStatus.SUCCEEDED,
                now=now,
                message="done",
                result=outcome["output"].model_dump(mode="json"),
            )
        with self._state_lock:  # a cancel arriving now finds the job terminal, not half-done
            run.finish(final)
            self._current = None
            self.store.save_job(final)
        self._publish_terminal(final)

    def _canceled_final(self, run: _JobRun, outcome: dict[str, Any], now: float, *,
                        stopped: bool) -> jobsm.Job:
        output = outcome.get("output")
        why = "" if stopped else (
            f"asked to stop but still running after {self.config.job_cancel_grace_s:.0f} s; "
            "its work may still finish")
        final = jobsm.canceled(
            run.job, now=now, remove=run.cancel is jobsm.JobStatus.REMOVED, why=why,
            result=output.model_dump(mode="json") if output is not None else None)
        if final.status is jobsm.JobStatus.REMOVED:
            final = final.model_copy(update={"acked": True})
        return final

    def _finish(self, job: jobsm.Job) -> None:
        self.store.save_job(job)
        self._publish_terminal(job)


def _request_of(job: jobsm.Job) -> CommandRequest:
    return CommandRequest(request_id=job.request_id, job_id=job.job_id, args=job.args)

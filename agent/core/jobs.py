"""The job state machine for long fleet commands (pure: no threads, no I/O).

::

    QUEUED ──▶ IN_PROGRESS ──▶ SUCCEEDED | FAILED | REJECTED | TIMED_OUT | CANCELED | REMOVED
       └──────────────────────▶ REJECTED | FAILED | TIMED_OUT | CANCELED | REMOVED

Every job reaches a terminal state (AWS IoT Jobs / Mender convention): a job past its
deadline is TIMED_OUT, and after a restart a job that was IN_PROGRESS is FAILED explicitly
(its work was interrupted and may be half done), while a QUEUED one is resumed.
Terminal states are final: a late result for a timed-out job is dropped, not applied.

CANCELED and REMOVED follow AWS IoT Jobs: the controller canceled the job (``cancel``) before
it ended: a QUEUED job never runs; an IN_PROGRESS one is asked to stop (a training burst stops
at its next step) and may have done part of its work. REMOVED is a cancel that also takes the
job off the broker at once (``cancel`` with ``remove``: AWS's DeleteJobExecution): its retained
``jobs/<id>`` message is cleared without waiting for an acknowledgement. Any other terminal
job's retained message is cleared once the controller acknowledges it (``ack-jobs``,
:attr:`Job.acked`), so finished jobs do not pile up on the broker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from agent.core.commands import CommandResult, ErrorInfo, JobView, ParsedCommand, result_of


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"
    REMOVED = "REMOVED"


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.TIMED_OUT,
     JobStatus.CANCELED, JobStatus.REMOVED}
)

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.IN_PROGRESS, JobStatus.REJECTED, JobStatus.FAILED, JobStatus.TIMED_OUT,
         JobStatus.CANCELED, JobStatus.REMOVED}
    ),
    # IN_PROGRESS -> IN_PROGRESS is a progress update; -> REJECTED when the handler refuses
    # once it has looked (e.g. constraints no longer hold), before changing anything.
    JobStatus.IN_PROGRESS: frozenset(
        {
            JobStatus.IN_PROGRESS,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.REJECTED,
            JobStatus.TIMED_OUT,
            JobStatus.CANCELED,
            JobStatus.REMOVED,
        }
    ),
}


class InvalidTransition(ValueError):
    """A transition the state machine does not allow (e.g. out of a terminal state)."""


class Job(BaseModel):
    """One job as persisted. Immutable: transitions return a new Job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    command: str
    args: dict[str, Any]
    request_id: str | None = None
    status: JobStatus = JobStatus.QUEUED
    progress: float | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: float
    updated_at: float
    deadline: float
    acked: bool = False  # the controller saw it terminal: its retained message is cleared

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def view(self) -> JobView:
        return JobView(
            job_id=self.job_id,
            command=self.command,
            status=self.status.value,
            progress=self.progress,
            message=self.message,
            result=self.result,
            error=self.error,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def new_job(
    job_id: str,
    command: str,
    args: dict[str, Any],
    *,
    request_id: str | None,
    now: float,
    timeout_s: float,
) -> Job:
    """A QUEUED job that must be terminal by ``now + timeout_s``."""
    return Job(
        job_id=job_id,
        command=command,
        args=args,
        request_id=request_id,
        created_at=now,
        updated_at=now,
        deadline=now + timeout_s,
    )


def job_result(
    parsed: ParsedCommand, job: Job, *, device_id: str, now: float, duplicate: bool = False
) -> CommandResult:
    """The reply to a long command: where its job is (ok unless the job was rejected).

    A ``duplicate`` (a QoS 1 redelivery or a repeated job id) reports the job already known;
    any error of that job is in the job view only.
    """
    return result_of(
        parsed,
        device_id=device_id,
        now=now,
        ok=job.status is not JobStatus.REJECTED,
        job=job.view(),
        error=None if duplicate else job.error,
        duplicate=duplicate,
    )


def transition(
    job: Job,
    status: JobStatus,
    *,
    now: float,
    progress: float | None = None,
    message: str = "",
    result: dict[str, Any] | None = None,
    error: ErrorInfo | None = None,
) -> Job:
    """Move ``job`` to ``status``.

    Raises:
        InvalidTransition: the move is not allowed from the job's current status.
    """
    if status not in _ALLOWED.get(job.status, frozenset()):
        raise InvalidTransition(f"job {job.job_id}: {job.status} -> {status} is not allowed")
    if progress is not None:
        progress = min(1.0, max(0.0, progress))
    elif status is JobStatus.SUCCEEDED:
        progress = 1.0
    else:
        progress = job.progress
    return job.model_copy(
        update={
            "status": status,
            "progress": progress,
            "message": message or job.message,
            "result": result,
            "error": error,
            "updated_at": now,
        }
    )


def timed_out(job: Job, now: float) -> Job | None:
    """The TIMED_OUT job if ``job`` is past its deadline and not terminal, else None."""
    if job.terminal or now <= job.deadline:
        return None
    return transition(
        job,
        JobStatus.TIMED_OUT,
        now=now,
        message="deadline passed",
        error=ErrorInfo(
            code="timed_out", message=f"job did not finish by its deadline ({job.deadline:.0f})"
        ),
    )


def recover(job: Job, now: float) -> Job:
    """What a job found in the store at startup becomes.

    QUEUED jobs are resumed (unchanged) unless past their deadline; IN_PROGRESS jobs are
    FAILED because the process that ran them is gone and their effect is unknown.
    """
    if job.terminal:
        return job
    late = timed_out(job, now)
    if late is not None:
        return late
    if job.status is JobStatus.IN_PROGRESS:
        return transition(
            job,
            JobStatus.FAILED,
            now=now,
            message="interrupted by an agent restart",
            error=ErrorInfo(
                code="failed", message="the agent restarted while this job ran; retry it"
            ),
        )
    return job


def canceled(
    job: Job,
    *,
    now: float,
    remove: bool = False,
    why: str = "",
    result: dict[str, Any] | None = None,
) -> Job:
    """``job`` CANCELED (or REMOVED) by the controller; ``result``: what it did before it
    stopped (a stopped burst's steps), if anything.

    Raises:
        InvalidTransition: the job is already terminal (there is nothing to cancel).
    """
    if job.terminal:
        raise InvalidTransition(
            f"job {job.job_id} is already {job.status.value}; nothing to cancel "
            "(acknowledge it with ack-jobs to clear its retained message)"
        )
    status = JobStatus.REMOVED if remove else JobStatus.CANCELED
    return transition(
        job,
        status,
        now=now,
        message=why or f"{status.value.lower()} by the fleet controller",
        result=result,
        error=ErrorInfo(code="canceled", message=why or f"{status.value.lower()} by the "
                        "fleet controller before it finished"),
    )

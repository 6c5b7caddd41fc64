"""The job state machine for long fleet commands (pure: no threads, no I/O).

::

    QUEUED ──▶ IN_PROGRESS ──▶ SUCCEEDED | FAILED | REJECTED | TIMED_OUT
       └──────────────────────▶ REJECTED | FAILED | TIMED_OUT

Every job reaches a terminal state (AWS IoT Jobs / Mender convention): a job past its
deadline is TIMED_OUT, and after a restart a job that was IN_PROGRESS is FAILED explicitly
(its work was interrupted and may be half done), while a QUEUED one is resumed.
Terminal states are final: a late result for a timed-out job is dropped, not applied.
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


TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.TIMED_OUT}
)

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.IN_PROGRESS, JobStatus.REJECTED, JobStatus.FAILED, JobStatus.TIMED_OUT}
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

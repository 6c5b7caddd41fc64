"""The commands the fleet link answers itself: ``cancel`` and ``ack-jobs`` (job bookkeeping).

They never reach the daemon: they act on the link's job queue
(:class:`agent.services.fleet.jobs.FleetJobs`). Both are idempotent enough for a QoS 1
redelivery: a second ``cancel`` of a job that ended is answered with a clear error naming its
state, a second ``ack-jobs`` clears the same (already empty) retained messages again.
"""

from __future__ import annotations

from agent.core import jobs as jobsm
from agent.core.command_wire import AckJobsArgs, CancelArgs, ErrorInfo
from agent.core.commands import CommandResult, ParsedCommand, result_of
from agent.services.fleet.jobs import FleetJobs


def answer(jobs: FleetJobs, parsed: ParsedCommand, *, device_id: str, now: float
           ) -> CommandResult:
    """Carry out a link command (``parsed.spec.by_link``) and build its reply.

    Args:
        jobs: the link's job queue.
        parsed: a ``cancel`` or ``ack-jobs`` request.
        device_id: this device (for the reply).
        now: wall-clock time for the reply.
    """
    args = parsed.args
    if isinstance(args, CancelArgs):
        return _cancel(jobs, parsed, args, device_id=device_id, now=now)
    if isinstance(args, AckJobsArgs):
        out = jobs.ack(args.job_ids)
        error = None
        if out.not_terminal:
            error = ErrorInfo(code="rejected", message=(
                f"{', '.join(out.not_terminal)} not finished: their retained messages stay; "
                "cancel them, or acknowledge them once they end"))
        return result_of(parsed, device_id=device_id, now=now, ok=error is None,
                         result=out.model_dump(mode="json"), error=error)
    return result_of(parsed, device_id=device_id, now=now, ok=False, error=ErrorInfo(
        code="internal", message=f"{parsed.spec.name} is not a fleet link command"))


def _cancel(jobs: FleetJobs, parsed: ParsedCommand, args: CancelArgs, *, device_id: str,
            now: float) -> CommandResult:
    try:
        job = jobs.cancel(args.job_id, remove=args.remove)
    except KeyError:
        return result_of(parsed, device_id=device_id, now=now, ok=False, error=ErrorInfo(
            code="rejected", message=f"no job {args.job_id!r} on {device_id} (never received "
            "here, or finished long ago and forgotten); check the job id"))
    except jobsm.InvalidTransition as exc:
        known = jobs.store.get_job(args.job_id)
        return result_of(parsed, device_id=device_id, now=now, ok=False,
                         job=known.view() if known is not None else None,
                         error=ErrorInfo(code="rejected", message=str(exc)))
    return result_of(parsed, device_id=device_id, now=now, ok=True, job=job.view())

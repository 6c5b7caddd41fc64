"""The job state machine: allowed moves, timeouts, recovery after a restart."""

from __future__ import annotations

import pytest

from agent.core.commands import ErrorInfo, ParsedCommand, parse_command
from agent.core.jobs import (
    TERMINAL,
    InvalidTransition,
    JobStatus,
    canceled,
    job_result,
    new_job,
    recover,
    timed_out,
    transition,
)


def job(now: float = 100.0, timeout: float = 10.0):
    return new_job("j1", "train-now", {"max_steps": 3}, request_id="r1", now=now, timeout_s=timeout)


def test_happy_path_with_progress():
    j = job()
    assert j.status is JobStatus.QUEUED and not j.terminal and j.deadline == 110.0
    j = transition(j, JobStatus.IN_PROGRESS, now=101, progress=0.0, message="started")
    j = transition(j, JobStatus.IN_PROGRESS, now=102, progress=0.5, message="half")
    assert j.progress == 0.5 and j.message == "half"
    j = transition(j, JobStatus.SUCCEEDED, now=103, result={"steps": 3})
    assert j.terminal and j.progress == 1.0 and j.result == {"steps": 3} and j.updated_at == 103


@pytest.mark.parametrize("end", sorted(TERMINAL))
def test_terminal_states_are_final(end):
    j = job()
    j = transition(j, JobStatus.IN_PROGRESS, now=101)
    j = transition(j, end, now=102)
    for nxt in JobStatus:
        with pytest.raises(InvalidTransition):
            transition(j, nxt, now=103)


def test_queued_cannot_succeed_without_running():
    with pytest.raises(InvalidTransition):
        transition(job(), JobStatus.SUCCEEDED, now=101)


def test_progress_is_clamped():
    j = transition(job(), JobStatus.IN_PROGRESS, now=101, progress=7.0)
    assert j.progress == 1.0


def test_timeout():
    j = job()
    assert timed_out(j, 109.0) is None
    late = timed_out(j, 111.0)
    assert (
        late is not None and late.status is JobStatus.TIMED_OUT and late.error.code == "timed_out"
    )
    assert timed_out(late, 200.0) is None  # already terminal


def test_recover_after_restart():
    queued = job()
    assert recover(queued, 105.0) is queued  # resumed as is
    running = transition(job(), JobStatus.IN_PROGRESS, now=101)
    failed = recover(running, 105.0)
    assert failed.status is JobStatus.FAILED and "restart" in failed.message
    assert recover(queued, 500.0).status is JobStatus.TIMED_OUT
    done = transition(running, JobStatus.SUCCEEDED, now=102)
    assert recover(done, 500.0) is done


def test_job_round_trips_as_json():
    from agent.core.jobs import Job

    j = transition(job(), JobStatus.IN_PROGRESS, now=101, progress=0.25)
    assert Job.model_validate_json(j.model_dump_json()) == j
    assert j.view().status == "IN_PROGRESS"


def test_job_result_reports_the_job_and_a_duplicate_carries_no_error_of_its_own():
    parsed = parse_command("train-now", b'{"request_id": "r1", "args": {}}', now=100.0,
                           max_payload_bytes=1000)
    assert isinstance(parsed, ParsedCommand)
    rejected = transition(job(), JobStatus.REJECTED, now=101,
                          error=ErrorInfo(code="rejected", message="busy"))
    fresh = job_result(parsed, rejected, device_id="dev", now=102.0)
    assert (fresh.request_id, fresh.command, fresh.device_id, fresh.ts) == (
        "r1", "train-now", "dev", 102.0)
    assert not fresh.ok and fresh.error == rejected.error and not fresh.duplicate
    assert fresh.job == rejected.view()
    again = job_result(parsed, rejected, device_id="dev", now=103.0, duplicate=True)
    assert not again.ok and again.duplicate and again.error is None
    assert again.job is not None and again.job.error == rejected.error
    queued = job_result(parsed, job(), device_id="dev", now=102.0)
    assert queued.ok and queued.error is None and queued.job.status == "QUEUED"


@pytest.mark.parametrize("remove", [False, True])
def test_cancel_a_queued_or_running_job(remove):
    want = JobStatus.REMOVED if remove else JobStatus.CANCELED
    queued = canceled(job(), now=101, remove=remove)
    assert queued.status is want and queued.terminal and queued.error.code == "canceled"
    running = transition(job(), JobStatus.IN_PROGRESS, now=101, progress=0.4)
    stopped = canceled(running, now=102, remove=remove, result={"steps": 2})
    assert stopped.status is want and stopped.result == {"steps": 2} and stopped.progress == 0.4


@pytest.mark.parametrize("end", sorted(TERMINAL))
def test_cancel_of_a_terminal_job_says_what_it_is(end):
    done = transition(transition(job(), JobStatus.IN_PROGRESS, now=101), end, now=102)
    with pytest.raises(InvalidTransition, match=f"already {end.value}; nothing to cancel"):
        canceled(done, now=103)


def test_an_acknowledged_job_round_trips_and_old_documents_read_as_unacknowledged():
    j = canceled(job(), now=101).model_copy(update={"acked": True})
    assert type(j).model_validate_json(j.model_dump_json()).acked
    old = job().model_dump(mode="json")
    del old["acked"]  # written by an agent from before acknowledgements
    assert not type(j).model_validate(old).acked

"""One command to many devices: send to all at once, collect each device's outcome.

``mobizo-fleet cmd --all NAME`` (or ``cmd dev1,dev2 NAME``, and ``cancel``) sends the command
to every device in one pass, then waits once for all the replies, then follows every job to
its end, then acknowledges the finished jobs (``ack-jobs``: their retained ``jobs/<id>``
messages are cleared). A device that does not answer within the timeout is reported as such,
never waited on forever; with a persistent session it still gets the command when it comes
back (within its session expiry), and its job id makes a repeat harmless.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agent.controller.client import TERMINAL_JOB_STATES, FleetClient, PendingRequest
from agent.core.commands import CommandResult

NO_ANSWER = "NO ANSWER"


@dataclass
class DeviceOutcome:
    """What one device made of a fleet-wide command.

    Attributes:
        device: the device id.
        status: ``OK``, ``FAILED``, ``NO ANSWER``, or the job's last state.
        ok: the command did what was asked (a job: SUCCEEDED; a cancel: CANCELED/REMOVED).
        job_id: the job it became, if any.
        detail: a short human line (the error, the job's message).
        reply: the device's reply as JSON, if it answered.
        job: the job's last view as JSON, if it became one.
    """

    device: str
    status: str
    ok: bool
    job_id: str | None = None
    detail: str = ""
    reply: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    acked: bool = field(default=False)


def _wanted_end(name: str) -> frozenset[str]:
    # A cancel succeeds when the job ends canceled; anything else when it succeeds.
    return frozenset({"CANCELED", "REMOVED"}) if name == "cancel" else frozenset({"SUCCEEDED"})


def run_on_devices(
    fc: FleetClient,
    devices: list[str],
    name: str,
    args: dict[str, Any],
    *,
    timeout: float,
    job_id: str | None = None,
    expires_in: float | None = None,
    follow: bool = True,
    ack: bool = True,
) -> list[DeviceOutcome]:
    """Send ``name`` to every device, collect replies, follow jobs, acknowledge them.

    Args:
        fc: a connected controller client.
        devices: the device ids.
        name: the command.
        args: its arguments (the same for every device).
        timeout: seconds to wait for the replies, and again for the jobs to end.
        job_id: the job id on every device (default: one new id for all of them).
        expires_in: the devices must not run it after this many seconds.
        follow: follow jobs to their end (else report them as the reply left them).
        ack: acknowledge finished jobs so their retained messages are cleared.
    """
    if job_id is None:
        job_id = f"fleet-{uuid.uuid4().hex[:16]}"
    pending = {d: fc.send(d, name, args, job_id=job_id, expires_in=expires_in) for d in devices}
    replies = _collect(fc, pending, timeout)
    outcomes = {d: _from_reply(d, name, replies.get(d)) for d in devices}
    waiting = {o.device: o.job_id for o in outcomes.values()
               if follow and o.job_id and o.status not in TERMINAL_JOB_STATES}
    if waiting:
        _follow(fc, waiting, outcomes, name, timeout)
    if ack:
        _ack(fc, outcomes, min(timeout, 5.0))
    return [outcomes[d] for d in devices]


def _collect(fc: FleetClient, pending: dict[str, PendingRequest], timeout: float
             ) -> dict[str, CommandResult]:
    replies: dict[str, CommandResult] = {}
    for msg in fc.messages_within(timeout):
        for device, req in pending.items():
            if device not in replies and (result := fc.reply_to(req, msg)) is not None:
                replies[device] = result
        if len(replies) == len(pending):
            break
    return replies


def _from_reply(device: str, name: str, result: CommandResult | None) -> DeviceOutcome:
    if result is None:
        return DeviceOutcome(device, NO_ANSWER, False,
                             detail="no answer (offline, or busy?)")
    reply = result.model_dump(mode="json")
    job = result.job
    if job is None:
        detail = result.error.message if result.error else ""
        return DeviceOutcome(device, "OK" if result.ok else "FAILED", result.ok,
                             detail=detail, reply=reply)
    view = job.model_dump(mode="json")
    ok = result.ok and job.status in _wanted_end(name)
    detail = result.error.message if result.error else job.message
    # A refused request (a cancel of a finished job) failed, whatever state its job is in.
    status = job.status if result.ok or job.status == "REJECTED" else "FAILED"
    return DeviceOutcome(device, status, ok, job_id=job.job_id, detail=detail,
                         reply=reply, job=view)


def _follow(fc: FleetClient, waiting: dict[str, str], outcomes: dict[str, DeviceOutcome],
            name: str, timeout: float) -> None:
    topics = {fc.topics.device(d).job(j): d for d, j in waiting.items()}
    fc.subscribe(*topics)
    left = set(topics)
    deadline = time.monotonic() + timeout
    for msg in fc.messages_within(timeout):
        device = topics.get(msg.topic)
        if device is None or not msg.payload:
            continue
        view = json.loads(msg.payload)
        out = outcomes[device]
        out.job, out.status, out.detail = view, view.get("status", "?"), view.get("message", "")
        if out.status in TERMINAL_JOB_STATES:
            left.discard(msg.topic)
            out.ok = out.status in _wanted_end(name)
            if view.get("error") and not out.ok:
                out.detail = view["error"].get("message", out.detail)
        if not left or time.monotonic() > deadline:
            break
    for topic in left:
        out = outcomes[topics[topic]]
        out.ok = False
        out.detail = f"job not finished within {timeout:.0f} s (last: {out.status})"


def _ack(fc: FleetClient, outcomes: dict[str, DeviceOutcome], timeout: float) -> None:
    done = {o.device: o.job_id for o in outcomes.values()
            if o.job_id and o.status in TERMINAL_JOB_STATES and o.status != "REMOVED"}
    if not done:
        return
    pending = {d: fc.send(d, "ack-jobs", {"job_ids": [j]}) for d, j in done.items()}
    for device, result in _collect(fc, pending, timeout).items():
        outcomes[device].acked = result.ok


def table(outcomes: list[DeviceOutcome]) -> str:
    """The outcomes as an aligned text table, one row per device."""
    head = ["DEVICE", "RESULT", "JOB", "DETAIL"]
    rows = [head] + [[o.device, o.status, o.job_id or "-", o.detail[:100]] for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def as_json(outcomes: list[DeviceOutcome]) -> list[dict[str, Any]]:
    """The outcomes as JSON-ready dicts."""
    return [
        {"device": o.device, "status": o.status, "ok": o.ok, "job_id": o.job_id,
         "detail": o.detail, "reply": o.reply, "job": o.job, "acked": o.acked}
        for o in outcomes
    ]

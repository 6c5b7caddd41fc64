"""Fleet commands: the command table, the handler protocol the daemon implements, dispatch.

A request arrives on ``<prefix>/cmd/<name>`` as JSON (:class:`CommandRequest`). It is answered
with a :class:`CommandResult` on the MQTT 5 response topic (correlation data echoed), else on
the payload's ``reply_to``, else on ``<prefix>/cmd-result/<request_id>`` (MQTT 3.1.1 clients).
Short commands are answered with their outcome; long ones (``train-now``, ``rollback``,
``purge-data``) become jobs (see :mod:`agent.core.jobs`) and are answered with the job's
status, then progress is published on ``<prefix>/jobs/<id>``.

Nothing here touches the network: :func:`parse_command` turns bytes into a typed request or an
error result, and :func:`execute` calls the :class:`CommandHandler` through the row of
:data:`COMMANDS` (one table: name, argument model, job or not, and the handler call). A
malformed request is an error result, never an exception. The wire models are in
:mod:`agent.core.command_wire`; the other wire documents (state, availability, config,
telemetry) in :mod:`agent.core.fleet_documents`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from agent.core.artifact import ArtifactStatusArgs, ChunkArgs, PushArgs
from agent.core.artifact_calls import (
    call_artifact_chunk,
    call_artifact_status,
    call_push_adapter,
    call_push_bundle,
)
from agent.core.command_wire import (
    WIRE_VERSION,
    Ack,
    AckJobsArgs,
    AckJobsOutput,
    CancelArgs,
    CommandFailed,
    CommandRejected,
    CommandRequest,
    CommandResult,
    ErrorCode,
    ErrorInfo,
    JobView,
    NoArgs,
    PauseArgs,
    PurgeDataArgs,
    PurgeDataOutput,
    RollbackArgs,
    RollbackOutput,
    SetLogLevelArgs,
    TrainNowArgs,
    TrainNowOutput,
)
from agent.core.fleet_documents import StateDocument, WireIn
from agent.core.json_depth import json_depth_exceeds
from agent.core.topics import valid_id, valid_publish_topic
from agent.errors import MobizoError

__all__ = [
    "COMMANDS", "NO_JOB", "WIRE_VERSION", "Ack", "AckJobsArgs", "AckJobsOutput", "CancelArgs",
    "CommandFailed", "CommandHandler",
    "CommandRejected", "CommandRequest", "CommandResult", "CommandSpec", "ErrorCode",
    "ErrorInfo", "JobContext", "JobView", "NoArgs", "ParseError", "ParsedCommand", "PauseArgs",
    "PurgeDataArgs", "PurgeDataOutput", "RollbackArgs", "RollbackOutput", "SetLogLevelArgs",
    "TrainNowArgs", "TrainNowOutput", "error_of", "error_result", "execute", "parse_command",
    "result_of", "run_short",
]


# --- the protocol the daemon implements -----------------------------------------------


@runtime_checkable
class JobContext(Protocol):
    """Handed to long commands: report progress, and stop early when asked."""

    def report(self, fraction: float | None, message: str) -> None: ...

    def should_stop(self) -> bool: ...


class CommandHandler(Protocol):
    """What the fleet link asks the daemon to do. Raise CommandRejected / CommandFailed."""

    def train_now(self, args: TrainNowArgs, job: JobContext) -> TrainNowOutput: ...

    def pause(self, reason: str) -> Ack: ...

    def resume(self) -> Ack: ...

    def rollback(self, version: int | str | None, job: JobContext) -> RollbackOutput: ...

    def status(self) -> StateDocument: ...

    def purge_data(self, before: datetime | None, job: JobContext) -> PurgeDataOutput: ...

    def set_log_level(self, level: str) -> Ack: ...


# --- the command table ----------------------------------------------------------------


# How a row calls the handler: (handler, typed args, job context) -> the typed output.
HandlerCall = Callable[[CommandHandler, Any, JobContext], BaseModel]


@dataclass(frozen=True)
class CommandSpec:
    """One row of the command table.

    Attributes:
        name: the command's name (the last topic level).
        args_model: the model its ``args`` must validate against.
        long: whether it runs as a job (progress on ``jobs/<id>``) or is answered at once.
        call: how the handler carries it out.
        by_link: answered by the fleet link itself (job bookkeeping: ``cancel``,
            ``ack-jobs``), never by the daemon; its ``call`` is not used.
    """

    name: str
    args_model: type[WireIn]
    long: bool
    call: HandlerCall
    by_link: bool = False


def _train_now(h: CommandHandler, a: TrainNowArgs, job: JobContext) -> BaseModel:
    return h.train_now(a, job)


def _pause(h: CommandHandler, a: PauseArgs, job: JobContext) -> BaseModel:
    return h.pause(a.reason)


def _resume(h: CommandHandler, a: NoArgs, job: JobContext) -> BaseModel:
    return h.resume()


def _rollback(h: CommandHandler, a: RollbackArgs, job: JobContext) -> BaseModel:
    return h.rollback(a.version, job)


def _status(h: CommandHandler, a: NoArgs, job: JobContext) -> BaseModel:
    return h.status()


def _purge_data(h: CommandHandler, a: PurgeDataArgs, job: JobContext) -> BaseModel:
    return h.purge_data(a.before, job)


def _set_log_level(h: CommandHandler, a: SetLogLevelArgs, job: JobContext) -> BaseModel:
    return h.set_log_level(a.level)


def _by_link(h: CommandHandler, a: BaseModel, job: JobContext) -> BaseModel:
    raise CommandFailed("this command is answered by the fleet link, not the daemon")


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("train-now", TrainNowArgs, long=True, call=_train_now),
        CommandSpec("pause", PauseArgs, long=False, call=_pause),
        CommandSpec("resume", NoArgs, long=False, call=_resume),
        CommandSpec("rollback", RollbackArgs, long=True, call=_rollback),
        CommandSpec("status", NoArgs, long=False, call=_status),
        CommandSpec("purge-data", PurgeDataArgs, long=True, call=_purge_data),
        CommandSpec("set-log-level", SetLogLevelArgs, long=False, call=_set_log_level),
        # Job bookkeeping, answered by the link (agent/services/fleet/jobs.py).
        CommandSpec("cancel", CancelArgs, long=False, call=_by_link, by_link=True),
        CommandSpec("ack-jobs", AckJobsArgs, long=False, call=_by_link, by_link=True),
        # Artifact pushes (agent/core/artifact.py): the manifest is a job, chunks are short.
        CommandSpec("push-adapter", PushArgs, long=True, call=call_push_adapter),
        CommandSpec("push-bundle", PushArgs, long=True, call=call_push_bundle),
        CommandSpec("artifact-chunk", ChunkArgs, long=False, call=call_artifact_chunk),
        CommandSpec("artifact-status", ArtifactStatusArgs, long=False,
                    call=call_artifact_status),
    )
}


@dataclass(frozen=True)
class ParsedCommand:
    """A valid request of a known command, its arguments typed."""

    spec: CommandSpec
    request: CommandRequest
    args: BaseModel


@dataclass(frozen=True)
class ParseError:
    """Why a message is not a valid command; where its error reply can go."""

    code: ErrorCode
    message: str
    request_id: str | None = None
    reply_to: str | None = None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def _salvage(payload: bytes) -> tuple[str | None, str | None]:
    """Best-effort request_id / reply_to from an invalid request, so the error can be routed."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    rid, reply = doc.get("request_id"), doc.get("reply_to")
    rid = rid if isinstance(rid, str) and valid_id(rid) else None
    reply = reply if isinstance(reply, str) and valid_publish_topic(reply) else None
    return rid, reply


def parse_command(
    name: str, payload: bytes, *, now: float, max_payload_bytes: int, max_depth: int = 32
) -> ParsedCommand | ParseError:
    """Turn a command message into a typed request, or say why it cannot be one.

    Args:
        name: the command name from the topic.
        payload: the raw message body (empty means ``{}``).
        now: wall-clock time (epoch seconds) to judge ``expires_at`` against.
        max_payload_bytes: larger payloads are refused without being parsed.
        max_depth: deeper JSON nesting is refused without being parsed (no RecursionError).
    """
    if len(payload) > max_payload_bytes:
        return ParseError(
            "payload_too_large",
            f"payload is {len(payload)} bytes; the limit is {max_payload_bytes}",
        )
    if json_depth_exceeds(payload, max_depth):
        return ParseError("bad_request", f"JSON nests deeper than {max_depth} levels; not parsed")
    rid, reply = _salvage(payload)
    try:
        request = CommandRequest.model_validate_json(payload or b"{}")
    except ValidationError as exc:
        return ParseError("bad_request", f"malformed request: {_describe(exc)}", rid, reply)
    rid, reply = request.request_id, request.reply_to
    spec = COMMANDS.get(name)
    if spec is None:
        known = ", ".join(sorted(COMMANDS))
        return ParseError(
            "unknown_command", f"unknown command {name!r}; known: {known}", rid, reply
        )
    expiry = request.expiry_epoch()
    if expiry is not None and now > expiry:
        return ParseError(
            "expired", f"request expired {now - expiry:.1f} s ago; not run", rid, reply
        )
    try:
        args = spec.args_model.model_validate(request.args)
    except ValidationError as exc:
        return ParseError("bad_request", f"bad args for {name}: {_describe(exc)}", rid, reply)
    return ParsedCommand(spec, request, args)


def execute(handler: CommandHandler, parsed: ParsedCommand, job: JobContext) -> BaseModel:
    """Call the handler for ``parsed``. Exceptions propagate (see :func:`error_of`)."""
    return parsed.spec.call(handler, parsed.args, job)


def error_of(exc: BaseException) -> ErrorInfo:
    """The error result for an exception raised by a handler."""
    if isinstance(exc, CommandRejected):
        return ErrorInfo(code="rejected", message=str(exc))
    if isinstance(exc, CommandFailed | MobizoError):
        return ErrorInfo(code="failed", message=str(exc))
    return ErrorInfo(code="internal", message=f"{type(exc).__name__}: {exc}")


class _NoJob:
    def report(self, fraction: float | None, message: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


NO_JOB: JobContext = _NoJob()


def run_short(
    handler: CommandHandler,
    parsed: ParsedCommand,
    *,
    device_id: str,
    clock: Callable[[], float] = time.time,
) -> CommandResult:
    """Run a short command now and build its result (handler errors become error results)."""
    try:
        output = execute(handler, parsed, NO_JOB)
    except Exception as exc:  # noqa: BLE001 - any handler failure is an error reply, not a crash
        return result_of(parsed, device_id=device_id, now=clock(), ok=False, error=error_of(exc))
    return result_of(
        parsed, device_id=device_id, now=clock(), ok=True, result=output.model_dump(mode="json")
    )


def result_of(
    parsed: ParsedCommand,
    *,
    device_id: str,
    now: float,
    ok: bool,
    result: dict[str, Any] | None = None,
    error: ErrorInfo | None = None,
    job: JobView | None = None,
    duplicate: bool = False,
) -> CommandResult:
    """The reply to ``parsed`` (its request id and command echoed), sent by ``device_id``."""
    return CommandResult(
        request_id=parsed.request.request_id,
        command=parsed.spec.name,
        device_id=device_id,
        ok=ok,
        result=result,
        error=error,
        job=job,
        duplicate=duplicate,
        ts=now,
    )


def error_result(err: ParseError, *, command: str, device_id: str, now: float) -> CommandResult:
    return CommandResult(
        request_id=err.request_id,
        command=command,
        device_id=device_id,
        ok=False,
        error=ErrorInfo(code=err.code, message=err.message),
        ts=now,
    )

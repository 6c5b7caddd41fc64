"""Fleet commands: wire models, the handler protocol the daemon implements, pure dispatch.

A request arrives on ``<prefix>/cmd/<name>`` as JSON (:class:`CommandRequest`). It is answered
with a :class:`CommandResult` on the MQTT 5 response topic (correlation data echoed), else on
the payload's ``reply_to``, else on ``<prefix>/cmd-result/<request_id>`` (MQTT 3.1.1 clients).
Short commands are answered with their outcome; long ones (``train-now``, ``rollback``,
``purge-data``) become jobs (see :mod:`agent.core.jobs`) and are answered with the job's
status, then progress is published on ``<prefix>/jobs/<id>``.

Nothing here touches the network: :func:`parse_command` turns bytes into a typed request or an
error result, and :func:`execute` calls the :class:`CommandHandler`. A malformed request is an
error result, never an exception. The other wire documents (state, availability, config,
telemetry) are in :mod:`agent.core.fleet_documents`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, ValidationError, field_validator

from agent.core.fleet_documents import StateDocument, WireIn, WireOut
from agent.core.topics import valid_id, valid_publish_topic
from agent.errors import MobizoError

WIRE_VERSION = 1


# --- errors the handler raises ----------------------------------------------------------


class CommandRejected(MobizoError):
    """The device will not do this now (busy, constraints, policy). Becomes ``rejected``."""


class CommandFailed(MobizoError):
    """The command was attempted and failed. Becomes ``failed``."""


ErrorCode = Literal[
    "bad_request",
    "unknown_command",
    "payload_too_large",
    "expired",
    "rejected",
    "failed",
    "timed_out",
    "internal",
]


class ErrorInfo(WireOut):
    code: ErrorCode
    message: str


# --- arguments ------------------------------------------------------------------------


class NoArgs(WireIn):
    pass


class TrainNowArgs(WireIn):
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="step budget")
    ignore_constraints: bool = Field(
        default=False, description="train even when the device is busy / on battery (testing)"
    )


class PauseArgs(WireIn):
    reason: str = Field(default="paused by the fleet controller", max_length=200)


class RollbackArgs(WireIn):
    version: int | str | None = Field(
        default=None, description="adapter version to activate; None: the previous one"
    )


class PurgeDataArgs(WireIn):
    before: datetime | None = Field(
        default=None, description="delete interactions older than this; None: all of them"
    )


class SetLogLevelArgs(WireIn):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


# --- outputs --------------------------------------------------------------------------


class Ack(WireOut):
    message: str = ""


class TrainNowOutput(WireOut):
    outcome: str = Field(description="e.g. completed, stopped, rejected_by_eval")
    steps: int = 0
    loss: float | None = None
    adapter_version: int | str | None = None


class RollbackOutput(WireOut):
    active_version: int | str | None


class PurgeDataOutput(WireOut):
    deleted: int


# --- jobs, requests and results -------------------------------------------------------


class JobView(WireOut):
    job_id: str
    command: str
    status: str
    progress: float | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    created_at: float
    updated_at: float


class CommandRequest(WireIn):
    """A command request. Every field is optional: ``{}`` is a valid ``status`` request."""

    request_id: str | None = Field(default=None, description="echoed; names the 3.1.1 reply topic")
    args: dict[str, Any] = Field(default_factory=dict)
    expires_at: float | datetime | None = Field(
        default=None, description="epoch seconds or ISO 8601; later than this it is not run"
    )
    reply_to: str | None = Field(default=None, description="reply topic for MQTT 3.1.1 clients")
    job_id: str | None = Field(default=None, description="idempotency key for long commands")

    @field_validator("request_id", "job_id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        if value is not None and not valid_id(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("reply_to")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not valid_publish_topic(value):
            raise ValueError("not a topic one can publish to (empty or has wildcards)")
        return value

    def expiry_epoch(self) -> float | None:
        if self.expires_at is None:
            return None
        if isinstance(self.expires_at, datetime):
            stamp = self.expires_at
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            return stamp.timestamp()
        return float(self.expires_at)


class CommandResult(WireOut):
    v: int = WIRE_VERSION
    request_id: str | None
    command: str
    device_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    job: JobView | None = None
    duplicate: bool = Field(default=False, description="a repeat of a job id already known")
    ts: float


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


@dataclass(frozen=True)
class CommandSpec:
    name: str
    args_model: type[WireIn]
    long: bool  # runs as a job


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("train-now", TrainNowArgs, long=True),
        CommandSpec("pause", PauseArgs, long=False),
        CommandSpec("resume", NoArgs, long=False),
        CommandSpec("rollback", RollbackArgs, long=True),
        CommandSpec("status", NoArgs, long=False),
        CommandSpec("purge-data", PurgeDataArgs, long=True),
        CommandSpec("set-log-level", SetLogLevelArgs, long=False),
    )
}


@dataclass(frozen=True)
class ParsedCommand:
    spec: CommandSpec
    request: CommandRequest
    args: BaseModel


@dataclass(frozen=True)
class ParseError:
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
    name: str, payload: bytes, *, now: float, max_payload_bytes: int
) -> ParsedCommand | ParseError:
    """Turn a command message into a typed request, or say why it cannot be one.

    Args:
        name: the command name from the topic.
        payload: the raw message body (empty means ``{}``).
        now: wall-clock time (epoch seconds) to judge ``expires_at`` against.
        max_payload_bytes: larger payloads are refused without being parsed.
    """
    if len(payload) > max_payload_bytes:
        return ParseError(
            "payload_too_large",
            f"payload is {len(payload)} bytes; the limit is {max_payload_bytes}",
        )
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
    args: Any = parsed.args
    name = parsed.spec.name
    if name == "train-now":
        return handler.train_now(args, job)
    if name == "pause":
        return handler.pause(args.reason)
    if name == "resume":
        return handler.resume()
    if name == "rollback":
        return handler.rollback(args.version, job)
    if name == "status":
        return handler.status()
    if name == "purge-data":
        return handler.purge_data(args.before, job)
    if name == "set-log-level":
        return handler.set_log_level(args.level)
    raise AssertionError(f"command table and execute() disagree about {name!r}")


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

"""Fleet command wire models: arguments, outputs, requests, results and their errors.

What travels on ``<prefix>/cmd/<name>`` (:class:`CommandRequest`) and back
(:class:`CommandResult`), and the typed arguments and outputs of each command. The table of
commands and the dispatch are in :mod:`agent.core.commands`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.core.fleet_documents import WireIn, WireOut
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
    "canceled",
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


class CancelArgs(WireIn):
    job_id: str = Field(description="the job to cancel (QUEUED or IN_PROGRESS)")
    remove: bool = Field(
        default=False,
        description="REMOVED instead of CANCELED: also clear its retained jobs/<id> message "
        "at once, without waiting for an acknowledgement (AWS DeleteJobExecution)",
    )

    @field_validator("job_id")
    @classmethod
    def _safe_job_id(cls, value: str) -> str:
        if not valid_id(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 _ . : -")
        return value


class AckJobsArgs(WireIn):
    job_ids: list[str] = Field(
        min_length=1, max_length=100, description="terminal jobs whose outcome the controller has"
    )

    @field_validator("job_ids")
    @classmethod
    def _safe_job_ids(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not valid_id(v)]
        if bad:
            raise ValueError(f"{bad[0][:40]!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
        return value


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


class AckJobsOutput(WireOut):
    cleared: list[str] = Field(default_factory=list, description="retained messages cleared")
    not_terminal: list[str] = Field(default_factory=list, description="still running: kept")
    unknown: list[str] = Field(
        default_factory=list, description="not (or no longer) known here; their topic cleared"
    )


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

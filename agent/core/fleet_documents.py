"""The fleet's wire documents other than commands, and the base models of every wire model.

The device publishes its ``state`` (retained; counts only, never content), its availability
(``available``: will, birth and goodbye, stamped with the session sequence) and telemetry; it
receives desired config on ``config/desired`` and reports the outcome on ``config/reported``.
Commands and jobs (:mod:`agent.core.commands`) build on the same base models.

The daemon implements :class:`StateSource` and :class:`DesiredConfigSink` for the fleet link.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from agent.core.readings import DeviceSnapshot

# Versions travel as JSON numbers: above 2**53 a controller in JavaScript cannot even tell two
# of them apart, and one huge version would make every later, normal one stale for good.
MAX_CONFIG_VERSION = 2**53 - 1
# The retained state's reason is a short human line, never a log line or user text.
MAX_REASON_CHARS = 160


class WireIn(BaseModel):
    """Base of every inbound wire model: unknown keys are an error the sender sees."""

    model_config = ConfigDict(extra="forbid")


class WireOut(BaseModel):
    """Base of outbound models: tolerant readers (the controller) ignore new keys."""

    model_config = ConfigDict(extra="ignore")


# --- the state document -----------------------------------------------------------------


class AdapterInfo(WireOut):
    version: int | str | None = None
    eval_metrics: dict[str, float] = Field(default_factory=dict)


class BurstInfo(WireOut):
    steps: int = 0
    loss: float | None = None
    duration_s: float | None = None
    outcome: str | None = None
    finished_at: float | None = None


class FederatedInfo(WireOut):
    """The device's last federated round (issue 20): its number, how it ended, and why
    it was declined. Counts and words only: no accumulator, no data."""

    round: int = Field(ge=0, description="the last round the daemon was asked for")
    status: str = Field(description="running, trained or declined")
    reason: str = Field(default="", max_length=200, description="why it declined")
    served: str = Field(default="", max_length=200,
                        description="what its eval gate did: serving vN, kept vM: why")
    at: float | None = Field(default=None, description="when that status was reached")


class ConstraintsInfo(WireOut):
    power: str | None = Field(default=None, description="e.g. mains, charging, battery")
    battery_pct: float | None = None
    thermal: str | None = Field(default=None, description="e.g. nominal, moderate, severe")
    temp_c: float | None = Field(default=None, description="hottest watched thermal zone, °C")
    idle: bool | None = None


class StateDocument(WireOut):
    """The retained ``state`` document. The daemon fills it; counts only, never content."""

    state: str = Field(default="unknown", description="e.g. idle, training, paused, error")
    reason: str = ""
    adapter: AdapterInfo = Field(default_factory=AdapterInfo)
    last_burst: BurstInfo | None = None
    constraints: ConstraintsInfo = Field(default_factory=ConstraintsInfo)
    store_counts: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    federated: FederatedInfo | None = Field(default=None,
                                            description="last federated round, if any")
    # Filled by the fleet link, not the daemon:
    session_seq: int | None = Field(default=None, description="bdSeq of the publishing session")
    ts: float | None = None


# --- availability, desired / reported config, telemetry ---------------------------


class Availability(WireOut):
    """``available`` payload. ``session_seq`` is the Sparkplug bdSeq: a will whose seq is
    older than the seq in the device's state document is a late death of an old session."""

    status: Literal["online", "offline", "stopped"]
    session_seq: int
    device_id: str
    ts: float | None = None


class DesiredConfig(WireIn):
    version: int = Field(
        ge=0, le=MAX_CONFIG_VERSION,
        description="monotonic; versions < the applied one are reported stale, == is a no-op",
    )
    config: dict[str, Any] = Field(description="runtime overrides, same shape as the TOML file")
    reset: bool = Field(
        default=False,
        description="accept this version whatever the applied one is (`mobizo-fleet config "
        "reset`): the sequence restarts from it",
    )


class ReportedConfig(WireOut):
    version: int | None = Field(description="the version in effect (None: no override ever)")
    status: Literal["applied", "rejected"]
    rejected_version: int | None = None
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="applied, but e.g. not saved for the next boot"
    )
    ts: float | None = None


class ApplyResult(WireOut):
    """What :class:`DesiredConfigSink` answers: the applied version, or validation errors."""

    applied_version: int | None = None
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class TelemetryPoint(WireOut):
    ts: float
    step: int | None = None
    loss: float | None = None
    extra: dict[str, float] = Field(default_factory=dict)


#: Telemetry's schema: 1 had points and resources; 2 adds ``board`` (numeric readings).
#: A message without ``schema_version`` is version 1. Fields are only ever added.
TELEMETRY_SCHEMA = 2


class BoardReadings(WireOut):
    """The board's numeric readings (telemetry schema 2): the state document keeps its text.

    As of the daemon's last policy check; None where the board has no such sensor or it could
    not be read.
    """

    temp_c: float | None = Field(default=None, description="hottest watched thermal zone, °C")
    battery_pct: float | None = Field(default=None, description="battery charge, percent")
    charging: bool | None = Field(default=None, description="a battery charges (or is full)")
    power: str | None = Field(default=None, description="mains, battery or unknown")
    mem_available_mb: float | None = Field(default=None, description="MemAvailable, MiB")
    load_1m: float | None = Field(default=None, description="1-minute load average")
    cpu_count: int | None = Field(default=None, description="online CPUs (load per core)")

    @classmethod
    def from_snapshot(cls, snap: DeviceSnapshot) -> BoardReadings:
        """The readings of one sensor snapshot."""
        power = snap.power
        return cls(temp_c=snap.max_temp_c, battery_pct=power.battery_pct,
                   charging=power.charging if power.has_battery else None,
                   power=power.source, mem_available_mb=snap.mem_available_mb,
                   load_1m=snap.load_1m, cpu_count=snap.cpu_count)


class Telemetry(WireOut):
    schema_version: int = Field(default=1, description="telemetry schema (absent: 1); the "
                                "device writes TELEMETRY_SCHEMA")
    ts: float
    session_seq: int
    points: list[TelemetryPoint] = Field(default_factory=list)
    resources: dict[str, float] = Field(default_factory=dict)
    board: BoardReadings | None = Field(default=None, description="schema 2: board readings")


# A child's log line quoted into a reason ("trainer exited 1: <line>") and quoted text.
_CHILD_DETAIL = re.compile(r"\b(trainer|evaluation) ([^:()]{1,60}): [^()]*")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def fleet_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """``reason`` as the retained state may carry it: one line, bounded, no quoted text and
    no child log line (those can hold user text; the full reason stays in the local log).

    Args:
        reason: the daemon's human reason line.
        limit: the most characters kept.
    """
    line = reason.splitlines()[0] if reason else ""
    line = _CHILD_DETAIL.sub(r"\1 \2 (details in the device log)", line)
    line = _QUOTED.sub("'…'", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- protocols the daemon implements ----------------------------------------------------


class StateSource(Protocol):
    """The daemon's current state, read by the link on change checks and periodically."""

    def current_state(self) -> StateDocument: ...


@runtime_checkable
class BoardSource(Protocol):
    """A state source that also reads the board (the daemon's does): telemetry's ``board``."""

    def board_readings(self) -> BoardReadings | None: ...


class DesiredConfigSink(Protocol):
    """Validates and applies desired overrides (persisted by the config layer)."""

    def apply(self, version: int, document: dict[str, Any]) -> ApplyResult: ...

    def boot_problems(self) -> list[str]:
        """Why the overrides saved before this boot were not replayed (empty: they were)."""
        ...

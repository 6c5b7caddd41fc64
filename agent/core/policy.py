"""When may a training burst run? A pure function of one device snapshot and a little history.

The conditions follow Android JobScheduler / federated-compute practice (DESIGN.md §5): on
mains or charging, battery not low, the user idle, the device cool, enough memory, inside the
allowed hours, and enough new data to be worth it. Start and stop thresholds differ
(hysteresis): a burst needs the stricter *start* side to begin and keeps running until a
*stop* threshold is crossed, so it does not flap around one number.

Every decision carries a human reason (``"waiting: on battery 54% < 80%"``) that the status
shows. A manual train-now may skip chosen constraints — power, battery, idle, hours, min
examples, cooldown — but never the thermal and memory guards, which protect the device.

No I/O here: :mod:`agent.io.sysfs` builds the :class:`DeviceSnapshot` (agent/core/readings.py);
the clock is an argument. Each check is one small pure function; :func:`decide` composes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol

# The snapshot types live in readings; re-exported for agent.io.sysfs and the tests.
from agent.core.readings import DeviceSnapshot as DeviceSnapshot
from agent.core.readings import PowerReading as PowerReading
from agent.core.readings import PowerSource as PowerSource
from agent.core.readings import SupplyReading as SupplyReading
from agent.core.readings import ThermalReading as ThermalReading

# ---------------------------------------------------------------------------------------------
# Inputs besides the snapshot.


class Limits(Protocol):
    """The constraint fields the policy reads (``agent.config.ConstraintsConfig`` fits)."""

    require_charging_or_mains: bool
    battery_start_pct: float
    battery_stop_pct: float
    idle_minutes: float
    stop_on_user_activity: bool
    thermal_start_c: float
    thermal_stop_c: float
    min_available_memory_mb: int
    stop_available_memory_mb: int
    max_load_per_core: float
    allowed_hours: str
    min_new_examples: int
    cooldown_minutes: float


@dataclass(frozen=True)
class PolicyState:
    """The recent history the policy needs.

    Attributes:
        training: a burst is running now (stop thresholds apply instead of start ones).
        new_examples: usable examples added since the last burst started.
        seconds_since_last_burst: since the last burst ended; None if there was none.
    """

    training: bool = False
    new_examples: int = 0
    seconds_since_last_burst: float | None = None


Skippable = Literal["power", "battery", "idle", "hours", "min_examples", "cooldown"]
SKIPPABLE: frozenset[str] = frozenset(
    {"power", "battery", "idle", "hours", "min_examples", "cooldown"}
)
NEVER_SKIPPABLE: frozenset[str] = frozenset({"thermal", "memory"})
# A plain "train now" means "don't wait for more data or the cooldown"; the device conditions
# (power, battery, idle, hours) still apply unless the request says to ignore them.
TRAIN_NOW_DEFAULT_SKIP: frozenset[str] = frozenset({"min_examples", "cooldown"})


@dataclass(frozen=True)
class TrainNow:
    """A manual "train now": which constraints it skips. Thermal and memory are never skipped.

    Raises:
        ValueError: asked to skip thermal, memory, or an unknown constraint.
    """

    skip: frozenset[str] = SKIPPABLE
    requested_by: str = "cli"

    def __post_init__(self) -> None:
        refused = set(self.skip) & NEVER_SKIPPABLE
        if refused:
            raise ValueError(
                f"train-now cannot skip {sorted(refused)}: the thermal and memory guards "
                "protect the device and always apply"
            )
        unknown = set(self.skip) - SKIPPABLE
        if unknown:
            raise ValueError(f"unknown constraint(s) {sorted(unknown)}; skippable: "
                             f"{sorted(SKIPPABLE)}")
        object.__setattr__(self, "skip", frozenset(self.skip))

    @classmethod
    def from_request(cls, ignore_constraints: bool, requested_by: str = "cli") -> TrainNow:
        """Map a train-now request (``TrainNowArgs.ignore_constraints``, the CLI flag).

        ``ignore_constraints=False`` skips only the data and cooldown gates; ``True`` skips
        every skippable constraint. Thermal and memory always hold.
        """
        skip = SKIPPABLE if ignore_constraints else TRAIN_NOW_DEFAULT_SKIP
        return cls(skip=skip, requested_by=requested_by)


# ---------------------------------------------------------------------------------------------
# The decision.

Action = Literal["start", "continue", "stop", "wait"]


@dataclass(frozen=True)
class Check:
    """One constraint's verdict: ``name`` (power, battery, idle, thermal, memory, load, hours,
    min_examples, cooldown), whether it holds, a short text, and whether train-now skipped it."""

    name: str
    ok: bool
    text: str
    skipped: bool = False


@dataclass(frozen=True)
class Decision:
    """The policy's answer.

    Attributes:
        train: a burst should be running after this decision.
        action: start / continue (train) or stop / wait (don't).
        reason: one human line for status and logs.
        checks: every constraint's verdict, in a fixed order.
    """

    train: bool
    action: Action
    reason: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def blocked_by(self) -> tuple[str, ...]:
        """Names of the constraints that keep it from training."""
        return tuple(c.name for c in self.checks if not c.ok and not c.skipped)


def _fmt_num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _fmt_idle(seconds: float) -> str:
    if math.isinf(seconds):
        return "no request yet"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def in_hours(window: tuple[int, int] | None, now: datetime) -> bool:
    """Is ``now`` (local wall time) inside ``window`` (minutes after midnight, may wrap)?"""
    if window is None:
        return True
    start, end = window
    minute = now.hour * 60 + now.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight, e.g. 23:00-06:00


def _parse_hours(window: str) -> tuple[int, int] | None:
    # Local copy of agent.config.constraints.parse_hours so the core does not import config.
    window = window.strip()
    if not window:
        return None
    start_s, end_s = window.split("-")
    h1, m1 = (int(x) for x in start_s.split(":"))
    h2, m2 = (int(x) for x in end_s.split(":"))
    return h1 * 60 + m1, h2 * 60 + m2


# ---------------------------------------------------------------------------------------------
# One pure helper per check: each returns its verdict with a human text, or None where the
# check does not apply (no battery, no hours window, a running burst's start-only gates).


def power_check(power: PowerReading, limits: Limits) -> Check:
    """Mains or charging, unless the config does not require it."""
    on_external = power.source == "mains" or power.charging
    if not limits.require_charging_or_mains:
        return Check("power", True, "on mains" if on_external else "on battery (allowed)")
    if power.source == "unknown":
        return Check("power", False, f"power source unknown ({power.reason or 'no reading'})")
    return Check("power", on_external,
                 ("charging" if power.charging and power.source != "mains" else "on mains")
                 if on_external else "on battery, not charging")


def battery_check(power: PowerReading, limits: Limits, running: bool) -> Check | None:
    """Battery floor, with hysteresis; a board without battery has nothing to check."""
    if not power.has_battery:
        return None
    floor = limits.battery_stop_pct if running else limits.battery_start_pct
    if power.battery_pct is None:
        return Check("battery", floor <= 0, "battery level unknown")
    pct = power.battery_pct
    ok = pct >= floor
    return Check("battery", ok,
                 f"battery {_fmt_num(pct)}%" + ("" if ok else f" < {_fmt_num(floor)}%"))


def idle_check(idle: float | None, limits: Limits, running: bool) -> Check:
    """User idle: start after idle_minutes; a running burst yields when the user comes back."""
    need = limits.idle_minutes * 60
    if idle is None:
        return Check("idle", need <= 0,
                     "user idle time unknown (inference service not reachable?)")
    if running and not limits.stop_on_user_activity:
        return Check("idle", True, f"idle {_fmt_idle(idle)}")
    ok = idle >= need
    return Check("idle", ok, f"idle {_fmt_idle(idle)}" if ok else (
        f"user active {_fmt_idle(idle)} ago (< {_fmt_num(limits.idle_minutes)} min idle)"))


def thermal_check(snapshot: DeviceSnapshot, limits: Limits, running: bool) -> Check:
    """Never skippable. No zones at all = a board without sensors (VMs, some AMD PCs): passes,
    and says so. Zones expected but unreadable = refuse."""
    limit = limits.thermal_stop_c if running else limits.thermal_start_c
    temp = snapshot.max_temp_c
    if temp is None:
        if snapshot.thermal_expected or snapshot.thermal:
            return Check("thermal", False, "temperature unknown (thermal zones unreadable)")
        return Check("thermal", True, "no thermal sensor")
    ok = temp < limit
    return Check("thermal", ok, f"{temp:.0f} °C" + ("" if ok else f" >= {_fmt_num(limit)} °C"))


def memory_check(mem: float | None, limits: Limits, running: bool) -> Check:
    """Never skippable; unknown refuses (we cannot show there is room)."""
    floor_mb = limits.stop_available_memory_mb if running else limits.min_available_memory_mb
    if mem is None:
        return Check("memory", floor_mb <= 0, "available memory unknown")
    ok = mem >= floor_mb
    return Check("memory", ok, f"{mem:.0f} MiB free" + ("" if ok else f" < {floor_mb} MiB"))


def load_check(snapshot: DeviceSnapshot, limits: Limits, running: bool) -> Check | None:
    """Load average per core: a start condition only (the trainer itself adds load)."""
    if limits.max_load_per_core <= 0 or running or snapshot.load_1m is None:
        return None
    per_core = snapshot.load_1m / max(1, snapshot.cpu_count)
    ok = per_core < limits.max_load_per_core
    return Check("load", ok, f"load {per_core:.2f}/core"
                 + ("" if ok else f" >= {_fmt_num(limits.max_load_per_core)}"))


def hours_check(limits: Limits, now: datetime) -> Check | None:
    """Allowed hours: both sides (a burst stops when the window closes)."""
    window = _parse_hours(limits.allowed_hours)
    if window is None:
        return None
    ok = in_hours(window, now)
    return Check("hours", ok, f"inside {limits.allowed_hours}" if ok
                 else f"outside allowed hours {limits.allowed_hours} (now {now:%H:%M})")


def min_examples_check(state: PolicyState, limits: Limits) -> Check | None:
    """Enough new data to be worth a burst; only gates a start."""
    if state.training:
        return None
    ok = state.new_examples >= limits.min_new_examples
    return Check("min_examples", ok, f"{state.new_examples} new examples"
                 + ("" if ok else f" < {limits.min_new_examples}"))


def cooldown_check(state: PolicyState, limits: Limits) -> Check | None:
    """Time since the last burst ended; only gates a start, and only after a first burst."""
    since = state.seconds_since_last_burst
    cooldown = limits.cooldown_minutes * 60
    if state.training or since is None or cooldown <= 0:
        return None
    ok = since >= cooldown
    return Check("cooldown", ok, "cooled down" if ok else
                 f"last burst {_fmt_idle(since)} ago (< {_fmt_num(limits.cooldown_minutes)} min)")


def decide(
    snapshot: DeviceSnapshot,
    state: PolicyState,
    limits: Limits,
    now: datetime,
    override: TrainNow | None = None,
) -> Decision:
    """Decide whether a training burst may start (or keep running).

    Args:
        snapshot: the device readings.
        state: whether a burst runs now, new examples, time since the last burst.
        limits: the constraint thresholds (``config.constraints``).
        now: local wall-clock time, for the allowed-hours window.
        override: a manual train-now, or None.

    Returns:
        The decision with its reason and every check.
    """
    running = state.training
    skip = override.skip if override else frozenset()
    verdicts = (
        power_check(snapshot.power, limits),
        battery_check(snapshot.power, limits, running),
        idle_check(snapshot.user_idle_s, limits, running),
        thermal_check(snapshot, limits, running),
        memory_check(snapshot.mem_available_mb, limits, running),
        load_check(snapshot, limits, running),
        hours_check(limits, now),
        min_examples_check(state, limits),
        cooldown_check(state, limits),
    )
    checks = tuple(replace(c, skipped=not c.ok and c.name in skip)
                   for c in verdicts if c is not None)
    if any(not c.ok and not c.skipped for c in checks):
        return Decision(False, "stop" if running else "wait",
                        _blocked_reason(checks, snapshot.power, running), checks)
    return Decision(True, "continue" if running else "start",
                    _allowed_reason(checks, running, manual=override is not None), checks)


def _blocked_reason(checks: tuple[Check, ...], power: PowerReading, running: bool) -> str:
    """``"waiting: …"`` / ``"stopping: …"`` with the text of every blocking check."""
    blocking = [c for c in checks if not c.ok and not c.skipped]
    texts = [c.text for c in blocking]
    names = [c.name for c in blocking]
    if "power" in names and "battery" in names and power.source == "battery":
        # One phrase for one fact: "on battery 54% < 80%".
        battery_text = texts.pop(names.index("battery"))
        texts[names.index("power")] = battery_text.replace("battery", "on battery", 1)
    return ("stopping: " if running else "waiting: ") + "; ".join(texts)


def _allowed_reason(checks: tuple[Check, ...], running: bool, *, manual: bool) -> str:
    """``"training allowed: …"`` with the device conditions, and what train-now skipped."""
    shown = [c for c in checks if c.name in ("power", "battery", "idle", "thermal")]
    skipped = [c.name for c in checks if c.skipped]
    head = "training continues" if running else (
        "training now (manual)" if manual else "training allowed"
    )
    reason = f"{head}: " + ", ".join(c.text for c in shown)
    if skipped:
        reason += f" (skipped: {', '.join(skipped)})"
    return reason

"""When may a training burst run? A pure function of one device snapshot and a little history.

The conditions follow Android JobScheduler / federated-compute practice (DESIGN.md §5): on
mains or charging, battery not low, the user idle, the device cool, enough memory, inside the
allowed hours, and enough new data to be worth it. Start and stop thresholds differ
(hysteresis): a burst needs the stricter *start* side to begin and keeps running until a
*stop* threshold is crossed, so it does not flap around one number.

Every decision carries a human reason (``"waiting: on battery 54% < 80%"``) that the status
shows. A manual train-now may skip chosen constraints — power, battery, idle, hours, min
examples, cooldown — but never the thermal and memory guards, which protect the device.

No I/O here: :mod:`agent.io.sysfs` builds the :class:`DeviceSnapshot`; the clock is an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

# ---------------------------------------------------------------------------------------------
# What the sensors saw (built by agent.io.sysfs; plain data so tests can write them by hand).

PowerSource = Literal["mains", "battery", "unknown"]


@dataclass(frozen=True)
class SupplyReading:
    """One entry of /sys/class/power_supply.

    Attributes:
        name: directory name ("AC", "BAT0", "usb").
        type: its ``type`` file ("Mains", "USB", "Battery", ...), or None if unreadable.
        online: ``online`` for external supplies (None if absent/unreadable).
        status: ``status`` for batteries ("Charging", "Discharging", "Full", "Not charging").
        capacity: ``capacity`` in percent for batteries.
        problem: why a field could not be read ("" when all was fine).
    """

    name: str
    type: str | None = None
    online: bool | None = None
    status: str | None = None
    capacity: float | None = None
    problem: str = ""


@dataclass(frozen=True)
class PowerReading:
    """How the device is powered.

    Attributes:
        source: "mains" (external power present, or no battery at all), "battery", or
            "unknown" (a battery exists but we could not tell whether it charges).
        charging: a battery is charging (or full / held "Not charging" on external power).
        battery_pct: mean capacity of the system batteries; None without battery or unreadable.
        has_battery: at least one system battery was found.
        reason: how this was concluded, or why it is unknown.
        supplies: the raw readings.
    """

    source: PowerSource
    charging: bool = False
    battery_pct: float | None = None
    has_battery: bool = False
    reason: str = ""
    supplies: tuple[SupplyReading, ...] = ()


@dataclass(frozen=True)
class ThermalReading:
    """One thermal zone; ``temp_c`` is None when unreadable (``problem`` says why)."""

    zone: str
    type: str | None
    temp_c: float | None
    problem: str = ""


@dataclass(frozen=True)
class DeviceSnapshot:
    """Everything the policy looks at, read at one moment.

    Attributes:
        power: power source and battery.
        thermal: the watched thermal zones (empty: the board exposes none).
        thermal_expected: zones were named in the config, so having none readable is a fault
            rather than a board without sensors.
        load_1m: 1-minute load average, None if unknown.
        cpu_count: online CPUs (for load per core).
        mem_available_mb: MemAvailable in MiB, None if unknown.
        user_idle_s: seconds since the user's last request; ``math.inf`` if never; None if
            unknown (e.g. the inference service could not be asked).
        problems: every "unknown" reading with its reason.
    """

    power: PowerReading
    thermal: tuple[ThermalReading, ...] = ()
    thermal_expected: bool = False
    load_1m: float | None = None
    cpu_count: int = 1
    mem_available_mb: float | None = None
    user_idle_s: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def max_temp_c(self) -> float | None:
        """The hottest readable watched zone, or None."""
        temps = [z.temp_c for z in self.thermal if z.temp_c is not None]
        return max(temps) if temps else None


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
    checks: list[Check] = []

    def add(name: str, ok: bool, text: str) -> None:
        checks.append(Check(name, ok, text, skipped=(not ok and name in skip)))

    # Power source: mains or charging, unless the config does not require it.
    power = snapshot.power
    on_external = power.source == "mains" or power.charging
    if not limits.require_charging_or_mains:
        add("power", True, "on mains" if on_external else "on battery (allowed)")
    elif power.source == "unknown":
        add("power", False, f"power source unknown ({power.reason or 'no reading'})")
    else:
        add("power", on_external,
            ("charging" if power.charging and power.source != "mains" else "on mains")
            if on_external else "on battery, not charging")

    # Battery floor, with hysteresis; a board without battery has nothing to check.
    if power.has_battery:
        floor = limits.battery_stop_pct if running else limits.battery_start_pct
        if power.battery_pct is None:
            add("battery", floor <= 0, "battery level unknown")
        else:
            pct = power.battery_pct
            ok = pct >= floor
            text = f"battery {_fmt_num(pct)}%" + ("" if ok else f" < {_fmt_num(floor)}%")
            add("battery", ok, text)

    # User idle: start after idle_minutes; a running burst yields when the user comes back.
    idle = snapshot.user_idle_s
    need = limits.idle_minutes * 60
    if idle is None:
        add("idle", need <= 0, "user idle time unknown (inference service not reachable?)")
    elif running and not limits.stop_on_user_activity:
        add("idle", True, f"idle {_fmt_idle(idle)}")
    else:
        ok = idle >= need
        text = f"idle {_fmt_idle(idle)}" if ok else (
            f"user active {_fmt_idle(idle)} ago (< {_fmt_num(limits.idle_minutes)} min idle)"
        )
        add("idle", ok, text)

    # Thermal: never skippable. No zones at all = a board without sensors (VMs, some AMD
    # PCs): passes, and says so. Zones expected but unreadable = refuse.
    limit = limits.thermal_stop_c if running else limits.thermal_start_c
    temp = snapshot.max_temp_c
    if temp is None:
        if snapshot.thermal_expected or snapshot.thermal:
            add("thermal", False, "temperature unknown (thermal zones unreadable)")
        else:
            add("thermal", True, "no thermal sensor")
    else:
        ok = temp < limit
        add("thermal", ok, f"{temp:.0f} °C" + ("" if ok else f" >= {_fmt_num(limit)} °C"))

    # Memory: never skippable; unknown refuses (we cannot show there is room).
    floor_mb = limits.stop_available_memory_mb if running else limits.min_available_memory_mb
    mem = snapshot.mem_available_mb
    if mem is None:
        add("memory", floor_mb <= 0, "available memory unknown")
    else:
        ok = mem >= floor_mb
        add("memory", ok, f"{mem:.0f} MiB free" + ("" if ok else f" < {floor_mb} MiB"))

    # Load average per core: a start condition only (the trainer itself adds load).
    if limits.max_load_per_core > 0 and not running and snapshot.load_1m is not None:
        per_core = snapshot.load_1m / max(1, snapshot.cpu_count)
        ok = per_core < limits.max_load_per_core
        add("load", ok, f"load {per_core:.2f}/core"
            + ("" if ok else f" >= {_fmt_num(limits.max_load_per_core)}"))

    # Allowed hours: both sides (a burst stops when the window closes).
    window = _parse_hours(limits.allowed_hours)
    if window is not None:
        ok = in_hours(window, now)
        add("hours", ok, f"inside {limits.allowed_hours}" if ok
            else f"outside allowed hours {limits.allowed_hours} (now {now:%H:%M})")

    # History: only gates a start.
    if not running:
        ok = state.new_examples >= limits.min_new_examples
        add("min_examples", ok, f"{state.new_examples} new examples"
            + ("" if ok else f" < {limits.min_new_examples}"))
        since = state.seconds_since_last_burst
        cooldown = limits.cooldown_minutes * 60
        if since is not None and cooldown > 0:
            ok = since >= cooldown
            add("cooldown", ok, "cooled down" if ok else
                f"last burst {_fmt_idle(since)} ago (< {_fmt_num(limits.cooldown_minutes)} min)")

    blocking = [c for c in checks if not c.ok and not c.skipped]
    if blocking:
        action: Action = "stop" if running else "wait"
        word = "stopping" if running else "waiting"
        texts = [c.text for c in blocking]
        names = [c.name for c in blocking]
        if "power" in names and "battery" in names and power.source == "battery":
            # One phrase for one fact: "on battery 54% < 80%".
            battery_text = texts.pop(names.index("battery"))
            texts[names.index("power")] = battery_text.replace("battery", "on battery", 1)
        return Decision(False, action, f"{word}: " + "; ".join(texts), tuple(checks))
    shown = [c for c in checks if c.name in ("power", "battery", "idle", "thermal")]
    skipped = [c.name for c in checks if c.skipped]
    head = "training continues" if running else (
        "training now (manual)" if override else "training allowed"
    )
    reason = f"{head}: " + ", ".join(c.text for c in shown)
    if skipped:
        reason += f" (skipped: {', '.join(skipped)})"
    return Decision(True, "continue" if running else "start", reason, tuple(checks))

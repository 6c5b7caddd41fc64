"""What the sensors saw: the device snapshot the training policy decides on.

Plain frozen data: :mod:`agent.io.sysfs` builds it from /sys and /proc, the tests write it by
hand, and :func:`agent.core.policy.decide` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

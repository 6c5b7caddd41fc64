"""Device sensors from sysfs and procfs, under a configurable root (a fake tree in tests).

Reads (kernel ABI: Documentation/ABI/testing/sysfs-class-power, sysfs-class-thermal, proc(5)):

- ``<root>/sys/class/power_supply/*/{type,online,status,capacity,scope}``
- ``<root>/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees Celsius)
- ``<procfs>/loadavg`` and ``<procfs>/meminfo`` (MemAvailable)

A missing or garbled file gives a reading of "unknown" with a reason, never an exception: a
sensor glitch must not take the daemon down. How long the user has been idle is not a sysfs
fact; it comes from an injected callable (the inference service's last-request time).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from agent.core.policy import DeviceSnapshot, PowerReading, SupplyReading, ThermalReading

log = logging.getLogger(__name__)

IdleSource = Callable[[], float | None]
"""Returns seconds since the user's last request, ``math.inf`` if none yet, None if unknown."""

# External supplies: anything that is not a battery (Mains, USB, USB_C, USB_PD, Wireless, ...).
_BATTERY = "Battery"
# Battery states that mean external power is connected (charge thresholds give "Not charging").
_ON_EXTERNAL_STATES = {"Charging", "Full", "Not charging"}


def _read(path: Path) -> tuple[str | None, str]:
    """(stripped text, "") or (None, reason)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().strip("\x00"), ""
    except FileNotFoundError:
        return None, f"{path} missing"
    except OSError as exc:  # EIO/ENODATA are common on flaky fuel gauges
        return None, f"{path} unreadable ({exc.strerror or exc})"


def _number(path: Path) -> tuple[float | None, str]:
    text, problem = _read(path)
    if text is None:
        return None, problem
    try:
        value = float(text)
    except ValueError:
        return None, f"{path} garbled ({text[:20]!r})"
    if not math.isfinite(value):
        return None, f"{path} garbled ({text[:20]!r})"
    return value, ""


def read_supply(directory: Path) -> SupplyReading:
    """One power supply directory; unreadable fields are None and explained in ``problem``."""
    problems: list[str] = []
    kind, why = _read(directory / "type")
    if kind is None:
        problems.append(why)
    online: bool | None = None
    status: str | None = None
    capacity: float | None = None
    if kind == _BATTERY:
        status, why = _read(directory / "status")
        if status is None:
            problems.append(why)
        capacity, why = _number(directory / "capacity")
        if capacity is None:
            problems.append(why)
        elif not 0 <= capacity <= 100:
            problems.append(f"{directory / 'capacity'} out of range ({capacity:g})")
            capacity = None
    elif kind is not None:
        value, why = _number(directory / "online")
        if value is None:
            problems.append(why)
        else:
            online = value >= 1  # 2 = "online, programmable" on some USB-PD supplies
    return SupplyReading(directory.name, kind, online, status, capacity, "; ".join(problems))


def _is_system_supply(directory: Path) -> bool:
    # scope == "Device" marks the battery of a peripheral (mouse, headset): not ours.
    scope, _ = _read(directory / "scope")
    return scope != "Device"


def read_power(root: Path, names: Sequence[str] | Literal["auto"] = "auto") -> PowerReading:
    """Power source and battery from ``<root>/sys/class/power_supply``.

    Args:
        root: the directory containing ``sys/``.
        names: supply directory names to read, or "auto" for every system supply.
    """
    base = Path(root) / "sys/class/power_supply"
    if names == "auto":
        dirs = sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []
        dirs = [d for d in dirs if _is_system_supply(d)]
        missing: list[str] = []
    else:
        dirs = [base / n for n in names if (base / n).is_dir()]
        missing = [n for n in names if not (base / n).is_dir()]
    supplies = tuple(read_supply(d) for d in dirs)
    batteries = [s for s in supplies if s.type == _BATTERY]
    externals = [s for s in supplies if s.type not in (None, _BATTERY)]
    note = f" (configured supplies missing: {', '.join(missing)})" if missing else ""

    external_online = any(s.online for s in externals)
    charging = any(s.status in _ON_EXTERNAL_STATES for s in batteries)
    capacities = [s.capacity for s in batteries if s.capacity is not None]
    pct = sum(capacities) / len(capacities) if capacities else None
    if not batteries:
        unreadable = [s.name for s in supplies if s.type is None]
        if unreadable:  # it might be a battery: we cannot claim mains
            return PowerReading("unknown", reason=f"type of {', '.join(unreadable)} unreadable"
                                + note, supplies=supplies)
        return PowerReading("mains", reason="no battery: mains-powered" + note, supplies=supplies)
    if external_online or charging:
        return PowerReading("mains", charging=charging, battery_pct=pct, has_battery=True,
                            reason="external power" + note, supplies=supplies)
    if all(s.status == "Discharging" for s in batteries):
        return PowerReading("battery", battery_pct=pct, has_battery=True,
                            reason="discharging" + note, supplies=supplies)
    states = ", ".join(f"{s.name}={s.status or s.problem or '?'}" for s in batteries)
    return PowerReading("unknown", battery_pct=pct, has_battery=True,
                        reason=f"battery state unclear ({states}){note}", supplies=supplies)


def read_thermal(
    root: Path, zones: Sequence[str] | Literal["auto"] = "auto"
) -> tuple[ThermalReading, ...]:
    """Temperatures of the watched zones, from ``<root>/sys/class/thermal/thermal_zone*``.

    Args:
        root: the directory containing ``sys/``.
        zones: zone types ("cpu-thermal") or directory names ("thermal_zone0"), or "auto".
    """
    base = Path(root) / "sys/class/thermal"
    dirs = sorted(base.glob("thermal_zone*"), key=_zone_index) if base.is_dir() else []
    readings = []
    for d in dirs:
        kind, _ = _read(d / "type")
        if zones != "auto" and d.name not in zones and kind not in zones:
            continue
        milli, why = _number(d / "temp")
        temp = None if milli is None else milli / 1000.0
        # Disabled or failed sensors report absurd values (-273 °C, 0xffff...): unknown.
        if temp is not None and not -40.0 <= temp <= 150.0:
            why, temp = f"{d / 'temp'} out of range ({temp:g} °C)", None
        readings.append(ThermalReading(d.name, kind, temp, why))
    return tuple(readings)


def _zone_index(path: Path) -> int:
    digits = path.name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


def read_loadavg(procfs: Path) -> tuple[float | None, str]:
    """The 1-minute load average from ``<procfs>/loadavg``."""
    text, why = _read(Path(procfs) / "loadavg")
    if text is None:
        return None, why
    try:
        return float(text.split()[0]), ""
    except (ValueError, IndexError):
        return None, f"{Path(procfs) / 'loadavg'} garbled ({text[:30]!r})"


def read_mem_available_mb(procfs: Path) -> tuple[float | None, str]:
    """MemAvailable from ``<procfs>/meminfo``, in MiB."""
    path = Path(procfs) / "meminfo"
    text, why = _read(path)
    if text is None:
        return None, why
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                value = float(parts[1])
            except (ValueError, IndexError):
                return None, f"{path} garbled MemAvailable line ({line[:40]!r})"
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            scale = {"kb": 1 / 1024, "mb": 1.0, "gb": 1024.0, "b": 1 / (1 << 20)}.get(unit)
            if scale is None:
                return None, f"{path} MemAvailable has unknown unit {parts[2]!r}"
            return value * scale, ""
    return None, f"{path} has no MemAvailable (kernel < 3.14?)"


class SysfsSensors:
    """Reads a :class:`DeviceSnapshot` from a (possibly fake) device tree.

    Args:
        sysfs_root: directory containing ``sys/`` ("/" on a device).
        procfs_root: procfs mount ("/proc" on a device).
        idle_source: seconds since the user's last request (see :data:`IdleSource`).
        power_supplies: supply names or "auto".
        thermal_zones: zone types/names or "auto".
        cpu_count: online CPUs, for load per core (default: ``os.cpu_count()``).
    """

    def __init__(
        self,
        sysfs_root: Path = Path("/"),
        procfs_root: Path = Path("/proc"),
        *,
        idle_source: IdleSource | None = None,
        power_supplies: Sequence[str] | Literal["auto"] = "auto",
        thermal_zones: Sequence[str] | Literal["auto"] = "auto",
        cpu_count: int | None = None,
    ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.procfs_root = Path(procfs_root)
        self.idle_source = idle_source
        self.power_supplies = power_supplies
        self.thermal_zones = thermal_zones
        self.cpu_count = cpu_count or os.cpu_count() or 1

    @classmethod
    def from_config(cls, config: object, idle_source: IdleSource | None = None) -> SysfsSensors:
        """Build from an ``AgentConfig`` (its ``device`` and ``constraints`` sections)."""
        device = config.device  # type: ignore[attr-defined]
        constraints = config.constraints  # type: ignore[attr-defined]
        return cls(
            device.sysfs_root, device.procfs_root, idle_source=idle_source,
            power_supplies=constraints.power_supplies, thermal_zones=constraints.thermal_zones,
        )

    def _idle(self) -> tuple[float | None, str]:
        if self.idle_source is None:
            return None, "no idle source (inference service not wired)"
        try:
            value = self.idle_source()
        except Exception as exc:  # the service may be restarting; unknown, not a crash
            return None, f"idle time unavailable ({exc})"
        if value is None:
            return None, "idle time unknown"
        return max(0.0, float(value)), ""

    def snapshot(self) -> DeviceSnapshot:
        """Read every sensor once. Never raises for missing or garbled files."""
        problems: list[str] = []
        try:
            power = read_power(self.sysfs_root, self.power_supplies)
        except OSError as exc:
            power = PowerReading("unknown", reason=f"power supplies unreadable ({exc})")
        if power.source == "unknown":
            problems.append(f"power: {power.reason}")
        problems += [f"power supply {s.name}: {s.problem}" for s in power.supplies if s.problem]
        try:
            thermal = read_thermal(self.sysfs_root, self.thermal_zones)
        except OSError as exc:
            thermal = ()
            problems.append(f"thermal: {exc}")
        problems += [f"thermal {z.zone}: {z.problem}" for z in thermal if z.problem]
        expected = self.thermal_zones != "auto"
        if expected and not thermal:
            problems.append(f"thermal: none of the configured zones {list(self.thermal_zones)} "
                            "exist")
        load, why = read_loadavg(self.procfs_root)
        if why:
            problems.append(f"load: {why}")
        mem, why = read_mem_available_mb(self.procfs_root)
        if why:
            problems.append(f"memory: {why}")
        idle, why = self._idle()
        if why:
            problems.append(f"idle: {why}")
        return DeviceSnapshot(
            power=power, thermal=thermal, thermal_expected=expected, load_1m=load,
            cpu_count=self.cpu_count, mem_available_mb=mem, user_idle_s=idle,
            problems=tuple(problems),
        )


def idle_since(last_request: Callable[[], float | None], clock: Callable[[], float],
               monotonic: Callable[[], float] = time.monotonic) -> IdleSource:
    """An :data:`IdleSource` from a "time of the last request" getter and a clock.

    The wall clock places each new last-request time once, when it is first seen (the daemon
    polls every tick, so that is a moment after the request); from then on the idle time
    grows on ``monotonic``, so an NTP step or a clock set back neither fakes nor hides idleness.

    Args:
        last_request: returns the wall-clock time of the user's last request, or None if
            there has been none (→ ``math.inf``). May raise when the service is unreachable.
        clock: the same clock as ``last_request`` uses (e.g. ``time.time``).
        monotonic: the clock durations are counted with.
    """
    seen: list[float] = []  # [last request (wall), when it became idle (monotonic)]

    def idle() -> float | None:
        last = last_request()
        if last is None:
            return math.inf
        if not seen or seen[0] != last:
            seen[:] = [last, monotonic() - max(0.0, clock() - last)]
        return max(0.0, monotonic() - seen[1])

    return idle

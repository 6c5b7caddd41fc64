"""[constraints] section: when the device allows a training burst.

Start and stop thresholds are separate (hysteresis, as in Android JobScheduler's battery-not-low
and thermal conditions) so a burst does not flap on and off around one number.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import Section
from agent.config.problems import Problems

_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_hours(window: str) -> tuple[int, int] | None:
    """Parse ``"HH:MM-HH:MM"`` into (start, end) minutes after midnight; ``""`` → None (always).

    Raises:
        ValueError: the window is malformed or empty (start == end).
    """
    window = window.strip()
    if not window:
        return None
    m = _HOURS.match(window)
    if not m:
        raise ValueError("expected 'HH:MM-HH:MM' (24 h, e.g. '01:00-06:00') or '' for always")
    start = int(m[1]) * 60 + int(m[2])
    end = int(m[3]) * 60 + int(m[4])
    if start == end:
        raise ValueError("start and end are equal; use '' to allow every hour")
    return start, end


class ConstraintsConfig(Section):
    """Device conditions a burst needs; start thresholds to begin, stop thresholds to end."""

    require_charging_or_mains: bool = Field(
        default=True,
        description="train only on mains or while charging (a board without battery is mains)",
    )
    battery_start_pct: float = Field(
        default=80.0, ge=0, le=100,
        description="battery level needed to start a burst (ignored without battery)",
    )
    battery_stop_pct: float = Field(
        default=70.0, ge=0, le=100,
        description="a running burst stops below this battery level",
    )
    idle_minutes: float = Field(
        default=10.0, ge=0, le=24 * 60,
        description="minutes since the user's last request before a burst may start",
    )
    stop_on_user_activity: bool = Field(
        default=True,
        description="stop a running burst as soon as the user sends a request",
    )
    thermal_zones: Literal["auto"] | list[str] = Field(
        default="auto",
        description="thermal zones to watch, by type ('cpu-thermal') or directory "
        "('thermal_zone0'); 'auto' = every zone; the hottest one counts",
    )
    thermal_start_c: float = Field(
        default=60.0, ge=0, le=125,
        description="start only below this temperature (°C)",
    )
    thermal_stop_c: float = Field(
        default=70.0, ge=0, le=125,
        description="a running burst stops at or above this temperature (°C)",
    )
    min_available_memory_mb: int = Field(
        default=512, ge=0, le=1 << 20,
        description="MemAvailable needed to start a burst (MiB)",
    )
    stop_available_memory_mb: int = Field(
        default=256, ge=0, le=1 << 20,
        description="a running burst stops below this MemAvailable (MiB)",
    )
    max_load_per_core: float = Field(
        default=0.0, ge=0, le=64,
        description="start only when the 1-min load average per core is below this; 0 = ignore",
    )
    allowed_hours: str = Field(
        default="",
        description="local time window for training, 'HH:MM-HH:MM' (may wrap midnight, "
        "e.g. '23:00-06:00'); '' = any time",
    )
    min_new_examples: int = Field(
        default=8, ge=0, le=1_000_000,
        description="new usable examples since the last burst before the next one starts",
    )
    cooldown_minutes: float = Field(
        default=5.0, ge=0, le=24 * 60,
        description="minutes to wait after a burst ends before another may start",
    )
    power_supplies: Literal["auto"] | list[str] = Field(
        default="auto",
        description="power supplies to read (names under /sys/class/power_supply, e.g. "
        "['AC', 'BAT0']); 'auto' = all system supplies",
    )

    @field_validator("allowed_hours")
    @classmethod
    def _hours_format(cls, value: str) -> str:
        parse_hours(value)
        return value.strip()

    @field_validator("thermal_zones", "power_supplies")
    @classmethod
    def _names_not_empty(cls, value: Literal["auto"] | list[str]) -> Literal["auto"] | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one name, or 'auto'")
            bad = [v for v in value if not v or "/" in v]
            if bad:
                raise ValueError(f"names must be plain directory names, not {bad}")
        return value

    @model_validator(mode="after")
    def _hysteresis(self) -> ConstraintsConfig:
        # The stop side must be at least as permissive as the start side, otherwise a burst
        # that just started would be stopped by the very next check.
        problems: list[tuple[str, str, object]] = []
        if self.battery_stop_pct > self.battery_start_pct:
            problems.append((
                "battery_stop_pct",
                f"must be <= battery_start_pct ({self.battery_start_pct}) for hysteresis",
                self.battery_stop_pct,
            ))
        if self.thermal_stop_c < self.thermal_start_c:
            problems.append((
                "thermal_stop_c",
                f"must be >= thermal_start_c ({self.thermal_start_c}) for hysteresis",
                self.thermal_stop_c,
            ))
        if self.stop_available_memory_mb > self.min_available_memory_mb:
            problems.append((
                "stop_available_memory_mb",
                f"must be <= min_available_memory_mb ({self.min_available_memory_mb}) "
                "for hysteresis",
                self.stop_available_memory_mb,
            ))
        if problems:
            raise Problems(problems)
        return self

    def hours_window(self) -> tuple[int, int] | None:
        """The allowed window as minutes after midnight, or None for always."""
        return parse_hours(self.allowed_hours)

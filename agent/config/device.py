"""[device] section: which board this is and where its sysfs/procfs live."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config.base import Section

PROFILE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class DeviceConfig(Section):
    """The board and the roots the sensors read from (a fake tree in tests)."""

    profile: str = Field(
        default="",
        pattern=r"^$|" + PROFILE_PATTERN,
        description="board profile from firmware_configs/ (e.g. 'raspberry-pi-5'); "
        "empty = built-in defaults; `mobizo-agent detect-board` suggests one",
    )
    sysfs_root: Path = Field(
        default=Path("/"),
        strict=False,
        description="directory that contains sys/ ('/' on a device, a fake tree in tests)",
    )
    procfs_root: Path = Field(
        default=Path("/proc"),
        strict=False,
        description="where procfs is mounted (loadavg, meminfo)",
    )
    threads: int = Field(
        default=0, ge=0, le=256,
        description="CPU threads for training; 0 = all online cores",
    )

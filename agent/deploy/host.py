"""What install needs to know about the live system it runs on (never about a --root)."""

from __future__ import annotations

import platform
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostFacts:
    """Facts about the running system.

    Attributes:
        systemd_running: systemd is PID 1 (sd_booted(3): /run/systemd/system exists).
        systemd_version: e.g. 252, or None when systemctl is missing or says nothing usable.
        arch: uname -m (where the venv's torch comes from: agent/deploy/torch_index.py).
        service_ids: (uid, gid) of the service user, or None when it does not exist yet.
    """

    systemd_running: bool
    systemd_version: int | None
    arch: str
    service_ids: tuple[int, int] | None


def read_host_facts(user: str, booted_marker: Path = Path("/run/systemd/system")) -> HostFacts:
    """Look at this machine (runs ``systemctl --version``; reads the user database)."""
    return HostFacts(
        systemd_running=booted_marker.is_dir(),
        systemd_version=_systemd_version(),
        arch=platform.machine(),
        service_ids=_ids(user),
    )


def parse_systemd_version(text: str) -> int | None:
    """``systemctl --version`` output -> 252 (first line: ``systemd 252 (252.39-1~deb12u2)``)."""
    match = re.match(r"systemd (\d+)", text.strip())
    return int(match.group(1)) if match else None


def _systemd_version() -> int | None:
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return None
    try:
        out = subprocess.run(
            [systemctl, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_systemd_version(out)


def _ids(user: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid

"""Helpers for tests that run systemd-analyze on unit files (skipped where it is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from agent.deploy.render import render_unit

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed"
)


def systemd_version() -> int:
    out = subprocess.run([SYSTEMD_ANALYZE or "systemd-analyze", "--version"],
                         capture_output=True, text=True, check=False).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else 0


def stage_for_verify(unit_dir: Path, work: Path) -> Path:
    """Copy ``unit_dir`` (units + drop-in dirs) to ``work``, ExecStart pointing at a stub.

    ``systemd-analyze verify`` insists that the ExecStart= binary exists, so the prefix is
    rewritten to a directory that holds an executable stub ``venv/bin/mobizo-agent``.
    """
    prefix = work / "prefix"
    stub = prefix / "venv" / "bin" / "mobizo-agent"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    staged = work / "units"
    staged.mkdir()
    for path in sorted(unit_dir.iterdir()):
        if path.is_file() and path.suffix in (".service", ".slice"):
            text = render_unit(path.read_text(), PurePosixPath(str(prefix)))
            (staged / path.name).write_text(text)
        elif path.is_dir() and path.name.endswith(".d"):
            shutil.copytree(path, staged / path.name)
    return staged


def verify(staged: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` the named units in ``staged`` (drop-ins included)."""
    return subprocess.run([SYSTEMD_ANALYZE or "systemd-analyze", "verify", *units],
                          cwd=staged, capture_output=True, text=True, timeout=120, check=False)


def exposure(staged: Path, unit: str) -> float:
    """The overall exposure level ``systemd-analyze security --offline=yes`` gives ``unit``."""
    out = subprocess.run(
        [SYSTEMD_ANALYZE or "systemd-analyze", "security", "--offline=yes", unit],
        cwd=staged, capture_output=True, text=True, timeout=120, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline=yes gave no score: {out.stderr.strip()}")
    return float(match.group(1))

"""trainer_probe: systemd-run is used only when a trial scope really starts.

The systemd-run stand-ins are shell scripts in tmp_path: a fake at the host edge (there is no
systemd as PID 1 in CI), never a patch of our own code.
"""

from __future__ import annotations

from pathlib import Path

from agent.io.children.launch import TrainerLimits
from agent.io.children.probe import usable_systemd_run

LIMITS = TrainerLimits(memory_max_mb=512)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def _booted(tmp_path: Path) -> Path:
    marker = tmp_path / "run-systemd-system"
    marker.mkdir()
    return marker


def test_no_systemd_running_means_fork(tmp_path: Path) -> None:
    fake = _script(tmp_path / "systemd-run", "exit 0\n")
    assert usable_systemd_run(LIMITS, systemd_run=fake, booted_marker=tmp_path / "absent") is None


def test_unauthorised_user_means_fork(tmp_path: Path) -> None:
    fake = _script(tmp_path / "systemd-run",
                   'echo "Failed to start transient scope unit: Interactive authentication '
                   'required." >&2\nexit 1\n')
    assert usable_systemd_run(LIMITS, systemd_run=fake, booted_marker=_booted(tmp_path)) is None


def test_working_systemd_run_is_used_and_gets_the_burst_properties(tmp_path: Path) -> None:
    log = tmp_path / "argv.log"
    # Behave like `systemd-run --scope`: record the options, then exec what follows `--`.
    fake = _script(tmp_path / "systemd-run",
                   f'for a in "$@"; do echo "$a" >> {log}; done\n'
                   'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n')
    got = usable_systemd_run(LIMITS, systemd_run=fake, booted_marker=_booted(tmp_path))
    assert got == fake
    recorded = log.read_text().splitlines()
    assert "--slice=mobizo-trainer.slice" in recorded
    assert "--property=MemoryMax=512M" in recorded


def test_hanging_systemd_run_means_fork(tmp_path: Path) -> None:
    fake = _script(tmp_path / "systemd-run", "exec sleep 30\n")  # exec: killed on timeout
    got = usable_systemd_run(LIMITS, systemd_run=fake, booted_marker=_booted(tmp_path),
                             timeout_s=0.5)
    assert got is None


def test_missing_binary_means_fork(tmp_path: Path) -> None:
    got = usable_systemd_run(LIMITS, systemd_run=str(tmp_path / "nope"),
                             booted_marker=_booted(tmp_path))
    assert got is None

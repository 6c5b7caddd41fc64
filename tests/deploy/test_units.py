"""The shipped unit files: systemd-analyze verify, and the hardening score stays low."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.unit_check import (
    exposure,
    needs_systemd_analyze,
    stage_for_verify,
    systemd_version,
    verify,
)

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ["mobizo-inference.service", "mobizo-agent.service", "mobizo-trainer.slice"]
# systemd-analyze security: 0 = locked down, 10 = exposed. Measured 1.2 (agent) and 1.1
# (inference) with systemd 252; 2.0 leaves room for a justified exception, not a regression.
MAX_EXPOSURE = 2.0


@needs_systemd_analyze
def test_every_unit_passes_verify(tmp_path: Path) -> None:
    staged = stage_for_verify(SYSTEMD_DIR, tmp_path)
    done = verify(staged, UNITS)
    assert done.returncode == 0, done.stderr
    # verify only warns about unknown or misspelt settings; those must not slip through either.
    assert done.stderr.strip() == "", done.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["mobizo-agent.service", "mobizo-inference.service"])
def test_hardening_exposure_stays_low(tmp_path: Path, unit: str) -> None:
    staged = stage_for_verify(SYSTEMD_DIR, tmp_path)
    assert exposure(staged, unit) < MAX_EXPOSURE


@needs_systemd_analyze
def test_notify_reload_dropin(tmp_path: Path) -> None:
    staged = stage_for_verify(SYSTEMD_DIR, tmp_path)
    dropin = staged / "mobizo-agent.service.d" / "notify-reload.conf"
    example = SYSTEMD_DIR / "mobizo-agent.service.d/notify-reload.conf.example"
    dropin.write_text(example.read_text())
    done = verify(staged, ["mobizo-agent.service"])
    if systemd_version() >= 253:
        assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    else:
        # What systemd/README.md warns about: <= 252 ignores the type but not ExecReload=.
        assert "notify-reload" in done.stderr


def test_units_agree_with_the_contracts() -> None:
    agent = (SYSTEMD_DIR / "mobizo-agent.service").read_text()
    inference = (SYSTEMD_DIR / "mobizo-inference.service").read_text()
    for key in ("Type=notify", "NotifyAccess=main", "User=mobizo", "Group=mobizo",
                "StateDirectory=mobizo-agent", "ProtectSystem=strict", "NoNewPrivileges=yes",
                "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n"):
        assert key in agent and key in inference, key
    assert re.search(r"^ExecStart=/opt/mobizo-agent/venv/bin/mobizo-agent run "
                     r"--config /etc/mobizo-agent/agent\.toml$", agent, re.M)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in agent
    assert "LoadCredential=mqtt-password:" in agent and "LoadCredential=mqtt-client-key:" in agent
    assert re.search(r"^Wants=.*mobizo-inference\.service", agent, re.M)
    assert re.search(r"^After=.*mobizo-inference\.service", agent, re.M)
    assert re.search(r"^Before=mobizo-agent\.service", inference, re.M)
    # the service reads the daemon's own config file (one schema), not a second set of flags
    assert re.search(r"^ExecStart=/opt/mobizo-agent/venv/bin/mobizo-agent serve "
                     r"--config /etc/mobizo-agent/agent\.toml ", inference, re.M)
    # Off on purpose (torch's oneDNN JIT needs W^X exceptions): see systemd/README.md.
    assert not re.search(r"^MemoryDenyWriteExecute=", agent + inference, re.M)


def _setting(unit: str, key: str) -> list[str]:
    text = (SYSTEMD_DIR / unit).read_text()
    return re.findall(rf"^{key}=(.*)$", text, re.M)


@pytest.mark.parametrize("unit", ["mobizo-agent.service", "mobizo-inference.service"])
def test_no_core_dumps_and_owner_only_files(unit: str) -> None:
    """Issue 17: the user's text never lands in a core dump or a group-readable file."""
    assert _setting(unit, "LimitCORE") == ["0"]
    assert _setting(unit, "UMask") == ["0077"]
    assert _setting(unit, "StateDirectoryMode") == ["0700"]
    # the runtime directories are shared with the group on purpose (the sockets)
    assert _setting(unit, "RuntimeDirectoryMode") == ["0750"]


def test_both_services_have_a_watchdog() -> None:
    """The inference service pings from its main thread while its threads live."""
    for unit in ("mobizo-agent.service", "mobizo-inference.service"):
        (value,) = _setting(unit, "WatchdogSec")
        assert 10 <= int(value) <= 300, (unit, value)


def test_tmpfiles_state_directories_are_owner_only() -> None:
    text = (SYSTEMD_DIR / "tmpfiles.d" / "mobizo-agent.conf").read_text()
    rows = [line.split() for line in text.splitlines() if line.startswith("d ")]
    modes = {row[1]: row[2] for row in rows}
    assert {path: mode for path, mode in modes.items()
            if path.startswith("/var/lib/mobizo-agent")} == dict.fromkeys(
        ["/var/lib/mobizo-agent", "/var/lib/mobizo-agent/bundles",
         "/var/lib/mobizo-agent/adapters", "/var/lib/mobizo-agent/tmp"], "0700")
    assert modes["/run/mobizo"] == "0750"


def test_the_default_launch_mode_caps_the_trainer_by_the_agent_units_cgroup() -> None:
    """Fork mode (no systemd-run scope: the default for the unprivileged daemon): the burst
    is a child in mobizo-agent.service's cgroup, so that unit's MemoryMax= is the kernel's
    cap on daemon + trainer; the trainer (oom_score_adj 1000) is the OOM victim and the
    unit survives it (OOMPolicy=continue)."""
    from agent.deploy.board import DAEMON_BASE_MB, BoardCaps
    from agent.deploy.render import render_board_dropins

    assert _setting("mobizo-agent.service", "MemoryMax") == ["2G"]
    assert _setting("mobizo-agent.service", "OOMPolicy") == ["continue"]
    assert int(_setting("mobizo-agent.service", "OOMScoreAdjust")[0]) < 1000
    caps = BoardCaps(profile="pi5", trainer_memory_mb=1536, inference_memory_mb=2048,
                     trainer_nice=19)
    dropin = render_board_dropins(caps)["mobizo-agent.service"]
    assert f"MemoryMax={DAEMON_BASE_MB + 1536}M" in dropin

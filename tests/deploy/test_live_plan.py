"""Planning an install into ``/`` (never applied here): the live-system steps and their order."""

from __future__ import annotations

from pathlib import Path

from agent.deploy.actions import RunCommand
from agent.deploy.host import HostFacts, parse_systemd_version
from agent.deploy.install import InstallOptions, plan_install, wants_notify_reload

SOURCE = Path(__file__).resolve().parents[2]


def host(running: bool, version: int | None = 252) -> HostFacts:
    return HostFacts(systemd_running=running, systemd_version=version, arch="aarch64",
                     service_ids=None)


def test_live_install_runs_sysusers_tmpfiles_then_reload() -> None:
    plan, _ = plan_install(InstallOptions(source=SOURCE, board="raspberry-pi-5", venv=False),
                           host(running=True))
    commands = [a.argv[:2] for a in plan.actions if isinstance(a, RunCommand)]
    assert commands == [
        ("systemd-sysusers", "/usr/lib/sysusers.d/mobizo-agent.conf"),
        ("systemd-tmpfiles", "--create"),
        ("systemctl", "daemon-reload"),
    ]
    assert isinstance(plan.actions[-1], RunCommand)  # after every file is in place
    assert any("aarch64" in note for note in plan.notes)  # arch only in messages


def test_without_systemd_running_nothing_is_run() -> None:
    plan, _ = plan_install(InstallOptions(source=SOURCE, board="dev", venv=False),
                           host(running=False))
    assert not [a for a in plan.actions if isinstance(a, RunCommand)]
    assert any("systemd is not running" in note for note in plan.notes)


def test_notify_reload_only_on_a_live_systemd_253_or_newer() -> None:
    root = Path("/")
    assert not wants_notify_reload("auto", root, host(True, 252))
    assert wants_notify_reload("auto", root, host(True, 253))
    assert not wants_notify_reload("auto", Path("/tmp/image"), host(True, 256))
    assert wants_notify_reload("yes", Path("/tmp/image"), host(False, None))
    assert not wants_notify_reload("no", root, host(True, 256))


def test_systemd_version_parsing() -> None:
    assert parse_systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT") == 252
    assert parse_systemd_version("systemd 256.7 (256.7-1)") == 256
    assert parse_systemd_version("") is None

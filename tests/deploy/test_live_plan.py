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


def test_live_install_writes_the_api_token_0600_for_the_service_user() -> None:
    from agent.deploy.actions import WriteFile

    facts = HostFacts(systemd_running=True, systemd_version=252, arch="aarch64",
                      service_ids=(990, 990))
    plan, layout = plan_install(InstallOptions(source=SOURCE, board="dev", venv=False), facts)
    token_path = layout.state_dir / "inference.token"
    if token_path.exists():  # a machine with mobizo-agent installed: never replaced
        assert not [a for a in plan.actions if getattr(a, "path", None) == token_path]
        return
    (token,) = [a for a in plan.actions if isinstance(a, WriteFile) and a.path == token_path]
    assert token.mode == 0o600 and token.owner == (990, 990)
    assert len(token.data.strip()) >= 32
    assert token.data.decode() not in "\n".join(plan.describe())  # never printed
    # no service user yet: the service makes the token at its first start, not root
    plan, _ = plan_install(InstallOptions(source=SOURCE, board="dev", venv=False),
                           host(running=True))
    assert not [a for a in plan.actions if getattr(a, "path", None) == token_path]
    assert any("inference.token" in note for note in plan.notes)


def test_a_secret_is_written_0600_with_its_owner(tmp_path: Path) -> None:
    import os

    from agent.deploy.actions import WriteFile, apply

    path = tmp_path / "state" / "inference.token"
    owner = (os.getuid(), os.getgid())
    apply([WriteFile(path, b"secret-token-value-0123456789\n", 0o600, "token", owner)],
          log=lambda _: None)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o600 and (st.st_uid, st.st_gid) == owner

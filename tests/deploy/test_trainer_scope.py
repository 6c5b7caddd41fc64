"""``install --trainer-scope``: the polkit rule for burst scopes, only where it can be narrow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.deploy.actions import DeployError, WriteFile, apply
from agent.deploy.host import HostFacts
from agent.deploy.install import InstallOptions, plan_install
from agent.deploy.uninstall import plan_uninstall

SOURCE = Path(__file__).resolve().parents[2]
RULE = SOURCE / "systemd/polkit-1/50-mobizo-trainer.rules"


def facts(version: int | None) -> HostFacts:
    return HostFacts(systemd_running=True, systemd_version=version, arch="aarch64",
                     service_ids=None)


def rule_writes(opts: InstallOptions, version: int | None) -> list[WriteFile]:
    plan, layout = plan_install(opts, facts(version))
    return [a for a in plan.actions if isinstance(a, WriteFile)
            and a.path == layout.polkit_rule_path]


def test_off_by_default(tmp_path: Path) -> None:
    opts = InstallOptions(source=SOURCE, root=tmp_path, board="dev", venv=False)
    assert rule_writes(opts, 257) == []


def test_into_an_image_the_rule_is_written(tmp_path: Path) -> None:
    opts = InstallOptions(source=SOURCE, root=tmp_path, board="dev", venv=False,
                          trainer_scope=True)
    [write] = rule_writes(opts, 252)  # the build host's systemd says nothing about the image's
    assert write.path == tmp_path / "etc/polkit-1/rules.d/50-mobizo-trainer.rules"
    assert write.data == RULE.read_bytes()


def test_a_live_systemd_older_than_257_is_refused_with_the_reason() -> None:
    opts = InstallOptions(source=SOURCE, root=Path("/"), board="dev", venv=False,
                          trainer_scope=True)
    with pytest.raises(DeployError, match=r"systemd >= 257 \(this is 252\).*bursts fork"):
        plan_install(opts, facts(252))


def test_uninstall_removes_the_rule(tmp_path: Path) -> None:
    opts = InstallOptions(source=SOURCE, root=tmp_path, board="dev", venv=False,
                          trainer_scope=True)
    plan, layout = plan_install(opts, facts(None))
    apply(plan.actions)
    assert layout.polkit_rule_path.is_file()
    undo, _ = plan_uninstall(tmp_path, facts(None))
    apply(undo.actions)
    assert not layout.polkit_rule_path.exists()


def test_the_rule_names_only_start_of_our_scopes_for_user_mobizo() -> None:
    text = RULE.read_text()
    assert 'subject.user == "mobizo"' in text and 'action.lookup("verb") == "start"' in text
    assert r"/^mobizo-trainer-[A-Za-z0-9_.-]+\.scope$/" in text


@pytest.mark.skipif(shutil.which("node") is None, reason="node (a JavaScript engine) missing")
def test_the_rule_grants_our_scopes_and_nothing_else() -> None:
    """The rule run by a JavaScript engine against the details polkit passes."""
    prelude = 'let rule; const polkit = {Result: {YES: "yes"}, addRule: f => { rule = f; }};\n'
    harness = prelude + RULE.read_text() + """
    const ask = (user, unit, verb) => rule(
        {id: "org.freedesktop.systemd1.manage-units",
         lookup: k => ({unit: unit, verb: verb})[k]}, {user: user}) || "no";
    console.log([
        ask("mobizo", "mobizo-trainer-run-0001-ab12-1.scope", "start"),
        ask("mobizo", "mobizo-trainer-x.service", "start"),
        ask("mobizo", "sshd.service", "start"),
        ask("mobizo", "mobizo-trainer-x.scope", "stop"),
        ask("nobody", "mobizo-trainer-x.scope", "start"),
        ask("mobizo", undefined, "start"),
    ].join(","));
    """
    out = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip()
    # systemd < 257 passes no unit for StartTransientUnit: the last case is what 252 sees.
    assert out == "yes,no,no,no,no,no"

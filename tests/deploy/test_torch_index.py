"""Where the venv's torch comes from, per machine: the plan install builds, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.deploy.actions import RunCommand
from agent.deploy.host import HostFacts
from agent.deploy.install import InstallOptions, plan_install
from agent.deploy.layout import PINNED_REQUIREMENTS
from agent.deploy.torch_index import CPU_INDEX_URL, names_an_index, torch_source

SOURCE = Path(__file__).resolve().parents[2]


def pip_command(tmp_path: Path, arch: str, **options: object) -> tuple[list[str], list[str]]:
    """The one pip command and the notes of a plan made on a machine ``arch``."""
    facts = HostFacts(systemd_running=False, systemd_version=None, arch=arch, service_ids=None)
    opts = InstallOptions(source=SOURCE, root=tmp_path / "root", board="dev",
                          python="/usr/bin/python3", **options)  # type: ignore[arg-type]
    plan, _ = plan_install(opts, facts)
    pips = [list(a.argv) for a in plan.actions
            if isinstance(a, RunCommand) and a.argv[1:3] == ("-m", "pip")]
    assert len(pips) == 1, plan.actions
    return pips[0], plan.notes


def test_aarch64_takes_torch_from_the_cpu_only_index(tmp_path: Path) -> None:
    argv, notes = pip_command(tmp_path, "aarch64")
    assert argv[argv.index("--extra-index-url") + 1] == CPU_INDEX_URL
    assert "torch==2.13.0+cpu" in argv and "torch==2.13.0" not in argv
    assert "executorch==1.5.1" in argv and argv[-1] == f"{SOURCE}[federated]"  # ONE command
    assert any(CPU_INDEX_URL in n and "CUDA" in n for n in notes), notes


def test_x86_64_keeps_the_configured_index(tmp_path: Path) -> None:
    argv, notes = pip_command(tmp_path, "x86_64")
    assert "--extra-index-url" not in argv
    assert [r for r in argv if r.startswith("torch")] == ["torch==2.13.0"]
    assert any("from the configured index" in n for n in notes), notes


def test_an_index_in_pip_args_is_the_operators_choice(tmp_path: Path) -> None:
    argv, notes = pip_command(tmp_path, "aarch64",
                              pip_args=("--no-index", "--find-links", "/wheels"))
    assert CPU_INDEX_URL not in argv and "torch==2.13.0" in argv
    assert any("+cpu" in n for n in notes), notes  # says what to check


def test_the_choice_can_be_forced_either_way(tmp_path: Path) -> None:
    argv, _ = pip_command(tmp_path, "x86_64", torch_index="cpu")
    assert "torch==2.13.0+cpu" in argv and CPU_INDEX_URL in argv
    argv, _ = pip_command(tmp_path, "aarch64", torch_index="pypi")
    assert "torch==2.13.0" in argv and CPU_INDEX_URL not in argv


@pytest.mark.parametrize("args,named", [
    (("--index-url", "https://mirror/simple"), True), (("--index-url=https://m",), True),
    (("-ihttps://m",), True), (("-f", "/wheels"), True), (("--no-index",), True),
    (("--no-cache-dir",), False), (("-q", "--pre"), False), ((), False),
])
def test_index_options_are_recognised(args: tuple[str, ...], named: bool) -> None:
    assert names_an_index(args) is named


def test_a_requirement_list_without_a_torch_pin_is_refused() -> None:
    with pytest.raises(ValueError, match="torch==VERSION"):
        torch_source("auto", "aarch64", (), ("executorch==1.5.1",))
    assert torch_source("cpu", "aarch64", (), PINNED_REQUIREMENTS).requirements[0] == \
        "torch==2.13.0+cpu"

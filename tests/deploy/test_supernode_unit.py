"""mobizo-supernode.service finds Flower's own executables (found under systemd 252)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path, PurePosixPath

import pytest

from agent.deploy.render import render_unit

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "mobizo-supernode.service"


def unit_path_value(prefix: str) -> str:
    text = render_unit(UNIT.read_text(), PurePosixPath(prefix))
    [line] = [x for x in text.splitlines() if x.startswith("Environment=PATH=")]
    return line.removeprefix("Environment=PATH=")


def test_the_venv_bin_comes_first_on_the_units_path() -> None:
    # flower-supernode starts `flower-superexec` by name: systemd's default PATH lacks it.
    assert unit_path_value("/srv/mobizo").split(":")[0] == "/srv/mobizo/venv/bin"


def test_flower_superexec_is_found_on_that_path() -> None:
    venv = Path(sys.executable).parent.parent  # this checkout's venv stands in for PREFIX/venv
    if not (venv / "bin" / "flower-superexec").exists():
        pytest.skip("flwr ([federated]) is not installed in this venv")
    path = unit_path_value("/opt/mobizo-agent").replace("/opt/mobizo-agent/venv", str(venv))
    assert shutil.which("flower-superexec", path=path) == str(venv / "bin" / "flower-superexec")

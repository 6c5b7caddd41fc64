"""`mobizo-agent config check|show` through the real dispatcher, in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main

PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs"


def test_check_valid_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nprofile = "raspberry-pi-4"\n')
    assert main(["config", "check", str(path), "--profiles-dir", str(PROFILES)]) == 0
    assert "OK (profile raspberry-pi-4)" in capsys.readouterr().out


def test_check_invalid_file_lists_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[training]\nq = 0\nlr = -1.0\n[constraints]\nthermal_start_c = 500\n")
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 error(s)" in out
    assert f"training.q: Input should be greater than or equal to 1 (got 0) [{path}:2]" in out
    assert "training.lr:" in out and "(got -1.0)" in out
    assert "constraints.thermal_start_c:" in out and "(got 500)" in out


def test_check_uses_mobizo_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[training]\nq = 3\n")
    monkeypatch.setenv("MOBIZO_CONFIG", str(path))
    assert main(["config", "check"]) == 0
    assert str(path) in capsys.readouterr().out


def test_show_json_reports_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nprofile = "dev"\n[paths]\nstate_dir = "{tmp_path}"\n')
    (tmp_path / "overrides.json").write_text(
        json.dumps({"format_version": 1, "overrides": {"training": {"q": 3}}})
    )
    assert main(["config", "show", str(path), "--json", "--profiles-dir", str(PROFILES)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["training"]["q"] == 3
    assert doc["sources"]["training.q"] == "override"
    assert doc["sources"]["constraints.idle_minutes"] == "profile dev"
    assert doc["sources"]["device.profile"] == f"file {path}"
    assert doc["sources"]["training.lr_schedule"] == "default"


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: non-zero for an invalid file."""
    path = tmp_path / "agent.toml"
    path.write_text("[device]\nthreads = 'many'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "device.threads" in proc.stdout and "(got 'many')" in proc.stdout

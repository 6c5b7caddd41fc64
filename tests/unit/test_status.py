"""The agent state machine, the status file, and `mobizo-agent status`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.cli import main
from agent.core.status import AgentStatus, BurstMetrics, Progress
from agent.io.status_file import StatusFileError, read_status, write_status


def test_burst_path_and_since() -> None:
    s = AgentStatus(since=0.0)
    s = s.to("waiting", 10.0, "waiting: on battery 54% < 80%", blocked_by=("battery",))
    assert s.headline() == "waiting: on battery 54% < 80%"
    assert AgentStatus(state="paused", reason="by fleet").headline() == "paused: by fleet"
    s = s.to("waiting", 20.0, "waiting: user active")
    assert s.since == 10.0 and s.updated_at == 20.0  # same state keeps `since`
    s = s.to("training", 30.0, "training allowed", progress=Progress(step=3, total=50, loss=2.5))
    assert s.headline() == "training 3/50, loss 2.5"
    s = s.to("evaluating", 40.0, "held-out split")
    assert s.progress is None and s.since == 40.0
    s = s.to("publishing", 41.0).to("waiting", 42.0, "cooldown")
    assert s.state == "waiting"


@pytest.mark.parametrize(("src", "dst"), [
    ("waiting", "publishing"), ("idle", "publishing"), ("training", "publishing"),
    ("error", "training"),
])
def test_illegal_transitions(src: str, dst: str) -> None:
    with pytest.raises(ValueError, match=f"from {src} to {dst}"):
        AgentStatus(state=src).to(dst, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("dst", ["paused", "error", "idle"])
def test_pause_error_idle_from_anywhere(dst: str) -> None:
    assert AgentStatus(state="publishing").to(dst, 1.0).state == dst  # type: ignore[arg-type]


def finished() -> AgentStatus:
    burst = BurstMetrics(started_at=100.0, ended_at=160.0, steps=50, outcome="published",
                         reason="beat active by 4.1%", train_loss_start=3.2, train_loss_end=2.9,
                         heldout_loss_candidate=2.95, heldout_loss_active=3.08,
                         adapter_version="v0003")
    return AgentStatus(state="waiting", reason="waiting: 0 new examples < 8", since=160.0,
                       updated_at=161.0, last_burst=burst, active_adapter="v0003",
                       pid=os.getpid(), version="0.1.0")


def test_status_file_round_trip_is_atomic(tmp_path: Path) -> None:
    path = write_status(tmp_path, finished())
    assert path == tmp_path / "status.json"
    assert read_status(tmp_path) == finished()
    assert json.loads(path.read_text())["format_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp files left


def test_missing_and_corrupt_status(tmp_path: Path) -> None:
    with pytest.raises(StatusFileError, match="not running"):
        read_status(tmp_path)
    (tmp_path / "status.json").write_text("{")
    with pytest.raises(StatusFileError, match="unreadable"):
        read_status(tmp_path)
    (tmp_path / "status.json").write_text('{"state": "dancing"}')
    with pytest.raises(StatusFileError, match="unexpected format"):
        read_status(tmp_path)


def test_status_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "no status file" in capsys.readouterr().out
    write_status(tmp_path, finished())
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "state:    waiting: 0 new examples < 8" in out
    assert "last burst: published, 50 steps" in out
    assert "held-out loss: candidate 2.95 vs active 3.08" in out
    assert f"pid {os.getpid()} running" in out
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_burst"]["adapter_version"] == "v0003"


def test_status_cli_finds_state_dir_from_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path / "st"}"\n')
    write_status(tmp_path / "st", AgentStatus(state="paused", reason="paused by fleet"))
    assert main(["status", "--config", str(cfg)]) == 0
    assert "paused: paused by fleet" in capsys.readouterr().out

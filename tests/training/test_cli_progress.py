"""`mobizo-agent train` progress: a bar (steps, ETA, loss) on a terminal, JSON lines and no
carriage return on pipes (systemd's journal, CI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.cli.train import progress_plan
from tests.terminal import run_in_pty, run_piped


@pytest.mark.parametrize("choice,stdout_tty,stderr_tty,want", [
    ("auto", True, True, ("bar", False)),    # a person at a terminal
    ("auto", False, True, ("bar", True)),    # `train > steps.jsonl`: both
    ("auto", True, False, ("log", False)),   # `train 2> train.log`
    ("auto", False, False, ("log", True)),   # systemd, CI: JSON lines + a line every 30 s
    ("json", True, True, ("none", True)),    # what the daemon asks for: exactly as before
    ("bar", False, False, ("bar", False)),
    ("log", True, True, ("log", False)),
])
def test_progress_plan(choice, stdout_tty, stderr_tty, want):
    assert progress_plan(choice, stdout_tty=stdout_tty, stderr_tty=stderr_tty) == want


def _train_argv(bundle: Path, data: Path, out: Path) -> list[str]:
    from agent.io.bundle_files import read_manifest

    batch = min(s.batch for s in read_manifest(bundle).train.shapes if s.slices == 1)
    return [sys.executable, "-m", "agent", "train", "--bundle", str(bundle), "--data",
            str(data), "--out", str(out), "--steps", "4", "--mode", "mezo", "--q", "1",
            "--batch", str(batch), "--no-eval"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from agent.training.sample_data import constant_response_rows, write_jsonl

    return write_jsonl(tmp_path / "data.jsonl", constant_response_rows(16, "ok!"))


@pytest.mark.runtime
def test_train_on_a_pty_shows_a_bar_and_on_pipes_json_lines(starter_bundle, data, tmp_path):
    code, text = run_in_pty(_train_argv(starter_bundle, data, tmp_path / "a"), timeout=300)
    assert code == 0, text
    assert "\rmezo q=" in text and "4/4 100%" in text and "loss" in text, text
    assert "adapter written to" in text and '{"step"' not in text

    proc = run_piped(_train_argv(starter_bundle, data, tmp_path / "b"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"step"')]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert "adapter written to" in proc.stderr

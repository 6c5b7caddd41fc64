"""`mobizo-export` progress: each stage live with its elapsed time on a terminal, the same plain
log lines as before on a pipe (no carriage return). The stage line itself is tested fast in
tests/io/test_progress.py; this runs the real export twice (minutes of lowering): slow."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.terminal import run_in_pty, run_piped


def _argv(out: Path) -> list[str]:
    return [sys.executable, "-m", "exporter.cli", "--preset", "starter", "--out", str(out),
            "--slices", "1", "--batch", "1", "--max-length", "16", "--train-only"]


@pytest.mark.slow
def test_export_shows_stages_on_a_pty_and_plain_lines_on_a_pipe(tmp_path: Path) -> None:
    code, text = run_in_pty(_argv(tmp_path / "a"), timeout=900)
    assert code == 0, text
    assert re.search(r"✓ lowering train program: .* \((\d+:)?\d+s?\)\r\n", text), text
    assert "\r[" in text and "  total " in text and f"wrote {tmp_path / 'a'}" in text

    proc = run_piped(_argv(tmp_path / "b"), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    assert "INFO lowering train program: " in proc.stderr

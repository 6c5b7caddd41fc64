"""``mobizo-bench host``: per-token host time against the decode step, on the starter bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.bench.cli import main as bench_main

pytestmark = pytest.mark.runtime


def test_host_bench_prints_every_setting(starter_bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "host.json"
    assert bench_main(["host", str(starter_bundle), "--tokens", "4", "--repeats", "1",
                       "--step-ms", "23.5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["setting"] for r in rows} >= {"greedy", "greedy + top_logprobs=20"}
    assert all(r["host_us"] > 0 and r["decode_ms"] > 0 for r in rows)
    assert "host % of this step" in capsys.readouterr().out

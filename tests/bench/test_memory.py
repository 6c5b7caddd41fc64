"""``mobizo-bench memory`` on the starter bundle: real service, real trainer, /proc readings.

It prints the ratios side by side and writes every key to ``--json``; no figure is asserted
(they are measurements of this machine, printed by the benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.bench.cli import main
from agent.bench.memory_procs import mem_available_mb, proc_memory

pytestmark = [pytest.mark.runtime]


def test_proc_readings_of_this_process() -> None:
    import os

    mine = proc_memory(os.getpid())
    assert mine.rss_mb > 0 and mine.pss_mb > 0 and mine.hwm_mb >= mine.rss_mb * 0.5
    assert mem_available_mb() > 0
    gone = proc_memory(2**22 + 7)  # no such pid: zeros, not an error
    assert (gone.rss_mb, gone.pss_mb) == (0, 0)


def test_memory_bench_prints_ratios_and_writes_json(
    starter_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "memory.json"
    assert main(["memory", str(starter_bundle), "--steps", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in ("service / weights", "board, released / service", "bundle / weights",
                  "request during burst ms", "trainer peak MB"):
        assert label in printed
    (row,) = json.loads(out.read_text())["bundles"]
    for key in ("scheme", "weights_mb", "bundle_mb", "import_baseline_mb", "service",
                "service_released", "trainer_peak_mb", "trainer_peak_pss_mb",
                "burst_released", "burst_kept",
                "memavailable_drop_mb", "warm_request_ms", "request_during_burst_ms",
                "one_process_mb", "ratios"):
        assert key in row, key
    assert {"rss_mb", "pss_mb", "hwm_mb"} <= set(row["service"])
    # the service is its front and its engine child; released, the engine has exited
    assert row["service_engine"]["pss_mb"] > 0 and row["service_front"]["pss_mb"] > 0
    assert row["service"]["pss_mb"] >= row["service_front"]["pss_mb"]
    assert row["service_released"]["pss_mb"] <= row["service_front"]["pss_mb"] * 1.5
    assert "board, kept / weights" in row["ratios"]

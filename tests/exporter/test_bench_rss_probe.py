"""``mobizo-bench zo``'s memory probe, each kind in its own process, on the tiny windowed bundle
(exported with ``--bench-forward``: its S = 1 method also sits alone in bench_infer.pte)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


# each kind is a fresh interpreter importing torch, executorch and transformers (~10 s quiet);
# the two whose code only this probe runs stay in the default suite
@pytest.mark.parametrize("kind", ["infer", "firstorder-hf",
                                  pytest.param("prge", marks=pytest.mark.slow),
                                  pytest.param("firstorder", marks=pytest.mark.slow)])
def test_probe_reports_peak_memory_above_the_baseline(windowed_bundle, kind):
    res = subprocess.run(
        [sys.executable, "-m", "agent.bench.rss_probe", kind, str(windowed_bundle),
         "--q", "1", "--batch", "2"],
        capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == {"weights_mb", "load_mb", "peak_mb", "baseline_mb"}
    assert out["peak_mb"] >= out["load_mb"] - 1.0  # a high-water mark includes the load
    assert out["baseline_mb"] > 0 and out["weights_mb"] > 0

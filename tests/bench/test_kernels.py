"""``mobizo-bench kernels`` on the starter's linear shapes: the schemes lower, run and are
reported with the CPU features that decide int8 speed."""

from __future__ import annotations

import json

from agent.bench import kernels
from agent.bench.cli import main as bench_main


def test_cpu_features_reads_x86_flags_and_arm_features(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert kernels.cpu_features(x86) == ["avx512_vnni", "avx2"]
    assert kernels.cpu_features(arm) == ["asimddp"]
    assert kernels.cpu_features(tmp_path / "missing") == []


def test_linear_shapes_of_a_prge_step():
    shapes = kernels.linear_shapes("110m", q=4, b=1, seq=128)
    assert shapes["gate_proj/up_proj"] == (1024, 768, 2048)
    assert shapes["lm_head"] == (512, 768, 32000)  # 2q·b rows x the 64 response targets
    assert "k_proj/v_proj" not in shapes  # 110M is multi-head: k/v are the q shape
    assert kernels.linear_shapes("starter", 1, 1, 16)["k_proj/v_proj"] == (32, 256, 128)


def test_fp32_and_int8_run_on_the_starter_shapes(tmp_path, capsys):
    # 8da4w lowers through the same path (the exporter's tests cover its programs)
    out = tmp_path / "kernels.json"
    assert bench_main(["kernels", "--shape", "starter", "--q", "1", "--seq", "16",
                       "--schemes", "none", "8da8w", "--repeats", "2", "--rounds", "1",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["scheme"] for r in rows} == {"none", "8da8w"}
    assert len(rows) == 2 * len(kernels.linear_shapes("starter", 1, 1, 16))
    assert all(r["seconds"] > 0 and r["speedup_vs_fp32"] > 0 for r in rows)
    assert "int8-relevant features" in capsys.readouterr().out

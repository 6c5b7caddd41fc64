"""``mobizo-bench decode-profile``: the op table of a bundle's decode and prefill, read from an
ExecuTorch trace of the real program (the starter bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.bench.cli import main as bench_main

pytestmark = pytest.mark.runtime


def test_decode_profile_names_the_attention_op_and_the_head(
        starter_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    assert bench_main(["decode-profile", str(starter_bundle), "--context", "8", "--steps", "4",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for method in ("decode", "prefill"):
        ops = {row["op"]: row for row in result[method]["ops"]}
        assert result[method]["ms"] > 0 and result[method]["delegate_calls"] >= 2
        assert ops["llama::custom_sdpa.out"]["calls"] == 4  # one per layer of the starter
        assert ops["LM head (last delegate's biggest linear)"]["ms"] > 0
        assert not any(name.startswith("index_put") for name in ops)  # the cache op writes
    # the masked forms for positions deep in the context: XNNPACK's matmuls, no LLM ops
    for method in ("prefill_long", "decode_long"):
        long_ops = {row["op"] for row in result[method]["ops"]}
        assert not any(name.startswith("llama::") for name in long_ops), long_ops
        assert any("Batch Matrix Multiply" in name for name in long_ops), long_ops
    printed = capsys.readouterr().out
    assert "decode:" in printed and "prefill_long:" in printed and "decode_long:" in printed
    assert printed.count("rest (between operators") == 4  # once per method


def test_decode_profile_refuses_a_context_past_the_cache(starter_bundle: Path) -> None:
    with pytest.raises(ValueError, match="do not fit the bundle's context"):
        bench_main(["decode-profile", str(starter_bundle), "--context", "100000"])

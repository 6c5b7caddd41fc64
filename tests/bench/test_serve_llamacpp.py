"""``mobizo-bench serve --vs-llamacpp``: the table and targets, the conversation, the refusals
(default run), and parity with llama.cpp on the starter bundle (slow: needs llama-cpp-python,
built from source)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bench import serve_vs_cli, serve_vs_table
from agent.bench.cli import main as bench_main
from agent.bench.llamacpp import INSTALL_LLAMA_CPP, common_prefix_len
from agent.bench.serve_common import id_parity
from agent.bench.serve_vs_llamacpp import conversation
from agent.errors import BundleError

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def _speeds(gen: float, prompt: float, ttft: tuple[float, float] | None = None
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"gen_tok_s": gen, "prompt_tok_s": prompt}
    if ttft:
        out["ttft"] = {"cold_s": ttft[0], "follow_up_s": ttft[1], "reused_tokens": 600}
    return out


def _scheme(gen: float, p99: float, overhead: float) -> dict[str, Any]:
    http = _speeds(gen, 500.0, (2.0, 0.3))
    http["outside_program_ms_per_request"] = 4.0
    return {
        "scheme": "none", "gguf": "f32", "prompt_tokens": 64, "gen_tokens": 64,
        "conversation_tokens": 760, "http": http,
        "in_process": {**_speeds(gen + 1, 520.0), "host_ms_per_token": 0.5,
                       "decode_step_ms": 20.0, "host_overhead_pct": overhead},
        "switch": {"switches": 40, "requests_during": 50, "failed_requests": 0,
                   "all_p99_ms": p99, "control_p50_ms": 5.0, "control_p99_ms": p99,
                   "swap_only_p99_ms": 3.0, "watcher_p99_ms": 12.0},
        "llama_cpp": {"version": "0.3.36", "base": _speeds(55.0, 650.0),
                      "lora": _speeds(50.0, 600.0, (1.5, 0.2))},
        "parity": {"lora": {"logits": {"max_abs_diff": 2e-4, "max_abs_logit": 3.1, "steps": 8},
                            "greedy_ids": id_parity([1, 2, 3], [1, 2, 3])}},
    }


def _results(**schemes: dict[str, Any]) -> dict[str, Any]:
    return {"machine": {"cpu": "Test CPU", "int8_flags": ["avx512_vnni"], "threads": 2,
                        "cpus": 2, "load_avg_1m": 1.0}, "schemes": schemes}


def test_table_has_a_row_per_engine_and_ratios_to_llama_cpp_with_the_lora() -> None:
    results = _results(none=_scheme(60.0, 30.0, 2.0))
    table = serve_vs_table.format_vs_table(results)
    rows = [line for line in table.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 4
    assert "HTTP (timings)" in rows[0] and "| 60.0 | 500 | 1.20 | 0.83 |" in rows[0]
    assert "llama.cpp f32 + same LoRA" in rows[3] and "| 1.00 | 1.00 |" in rows[3]
    assert "| 2.000 | 0.300 | 0.15 |" in rows[0]
    assert "Test CPU (int8 flags: avx512_vnni)" in table and "noisy" in table
    assert "max |logits diff| 2.00e-04" in table and "greedy token ids identical (3/3" in table


def test_switch_and_http_lines_carry_the_load_average() -> None:
    scheme = _scheme(60.0, 30.0, 2.0)
    scheme["switch"]["load_avg_1m"] = 3.2
    scheme["http"]["load_avg_1m"] = 0.4
    scheme["http"]["ttft"]["prompt_tokens"] = 700
    table = serve_vs_table.format_vs_table(_results(none=scheme))
    switch = next(line for line in table.splitlines() if "adapter switches" in line)
    assert switch.endswith("(load avg 3.2)")
    assert "decode 4.0 ms (load avg 0.4); follow-up reused 600 cached tokens of 700" in table
    assert "a distinct prompt per request" in table and "own reply back" in table


def test_the_deep_context_decode_line_compares_with_llama_cpp_and_is_no_target() -> None:
    scheme = _scheme(60.0, 30.0, 2.0)
    scheme["long_context"] = 800
    scheme["http"]["long"] = {**_speeds(31.0, 400.0), "load_avg_1m": 0.5}
    scheme["llama_cpp"]["lora"]["long"] = _speeds(31.0, 450.0)
    table = serve_vs_table.format_vs_table(_results(none=scheme))
    assert ("none decode deep in the context (after a 800-token prompt): ours 31.0 tok/s, "
            "llama.cpp f32+LoRA 31.0 tok/s, ratio 1.00 (load avg 0.5)") in table
    assert len(serve_vs_table.targets(_results(none=scheme))) == 5
    assert "deep in the context" not in serve_vs_table.format_vs_table(
        _results(none=_scheme(60.0, 30.0, 2.0)))  # results without it: no line


def test_targets_pass_and_fail_by_their_thresholds() -> None:
    ok = serve_vs_table.targets(_results(none=_scheme(60.0, 30.0, 2.0)))
    assert all(ok.values()) and len(ok) == 5
    bad = serve_vs_table.targets(_results(none=_scheme(40.0, 80.0, 9.0)))
    failed = {name for name, passed in bad.items() if not passed}
    assert failed == {"none: decode >= llama.cpp f32+LoRA",
                      "none: host overhead <= 5 % of a decode step",
                      "none: switch p99 < 50 ms over >= 40 switches, 0 failed"}


def test_conversation_alternates_roles_and_has_the_asked_length() -> None:
    msgs = conversation(6, 750)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3 + ["user"]
    assert 550 <= sum(len(m["content"]) for m in msgs) <= 660  # + the template: ~750 tokens
    assert conversation(6, 750) == msgs  # seeded: both engines get the same ids every run


def test_common_prefix_and_id_parity() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert id_parity([5, 6], [5, 7, 8]) == {"greedy_prefix_agreement": 1, "of": 3,
                                            "identical": False}


def _args(tmp_path: Path, **kw: Any) -> argparse.Namespace:
    base = dict(bundle=None, bundle_8da8w=None, bundle_8da4w=None, quantize=None,
                workdir=tmp_path, shape="starter")
    return argparse.Namespace(**{**base, **kw})


def test_a_bundle_of_another_scheme_is_refused(starter_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="--bundle-8da8w .* is a 'none' bundle"):
        serve_vs_cli.resolve_bundles(_args(tmp_path, bundle_8da8w=starter_bundle))


def test_given_bundles_are_reused_without_export(starter_bundle: Path, tmp_path: Path) -> None:
    assert serve_vs_cli.resolve_bundles(_args(tmp_path, bundle=starter_bundle)) == {
        "none": starter_bundle}


@pytest.mark.skipif(HAVE_LLAMA_CPP, reason="llama_cpp is installed here")
def test_without_llama_cpp_the_cli_says_how_to_install_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["serve", "--vs-llamacpp"]) == 1
    err = capsys.readouterr().err
    assert "needs llama-cpp-python" in err and INSTALL_LLAMA_CPP in err


@pytest.mark.slow
@pytest.mark.runtime
def test_llama_cpp_f32_matches_our_fp32_program(starter_bundle: Path, tmp_path: Path) -> None:
    """Same weights, same adapter: logits within 1e-3 and the same greedy token ids."""
    if not HAVE_LLAMA_CPP:
        pytest.skip(f"needs llama-cpp-python: {INSTALL_LLAMA_CPP}")
    from agent.bench import llamacpp
    from agent.bench.gguf_writer import read_shape, write_lora
    from agent.bench.serve_common import write_adapters
    from agent.bench.serve_vs_llamacpp import base_checkpoint, gguf_files, logits_parity
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.runtime import InferProgram

    validator = AdapterValidator(starter_bundle)
    flat = write_adapters(tmp_path, validator, count=1)[0]
    files = gguf_files(validator.manifest, tmp_path, ["f32"], threads=2)
    lora = write_lora(tmp_path / "a0", read_shape(base_checkpoint(validator.manifest, tmp_path)),
                      tmp_path / "lora.gguf")
    program = InferProgram(starter_bundle, threads=2)
    prompt = list(range(40, 72))
    for adapter, b in ((None, np.zeros_like(flat)), (lora, flat)):
        engine = llamacpp.LlamaCppEngine(files["f32"], threads=2, n_ctx=128, lora=adapter)
        parity = logits_parity(program, b, engine, prompt, steps=8)
        assert parity["max_abs_diff"] < 1e-3, parity
        ours, theirs = [], llamacpp.greedy(engine, prompt, 16).tokens
        logits, pos = program.forward(prompt, 0, b), len(prompt)
        for _ in range(16):
            ours.append(int(np.argmax(logits)))
            logits, pos = program.forward([ours[-1]], pos, b), pos + 1
        assert ours == theirs


@pytest.mark.slow
@pytest.mark.runtime
def test_llama_cpp_follow_up_turn_reuses_its_own_reply(starter_bundle: Path,
                                                       tmp_path: Path) -> None:
    """llama.cpp's side of the multi-turn TTFT: the follow-up carries the reply llama.cpp
    generated, and its prompt cache keeps the previous prompt and that reply."""
    if not HAVE_LLAMA_CPP:
        pytest.skip(f"needs llama-cpp-python: {INSTALL_LLAMA_CPP}")
    from agent.bench import llamacpp
    from agent.bench.serve_vs_llamacpp import gguf_files
    from agent.io.adapter_fs import AdapterValidator

    files = gguf_files(AdapterValidator(starter_bundle).manifest, tmp_path, ["f32"], threads=2)
    engine = llamacpp.LlamaCppEngine(files["f32"], threads=2, n_ctx=128)
    history, tail = list(range(40, 70)), list(range(80, 90))
    replies: list[list[int]] = []

    def follow_up(reply: list[int]) -> list[int]:
        replies.append(reply)
        return [*history, *reply, *tail]

    ttft = llamacpp.time_to_first_token(engine, list(range(100, 110)), history, follow_up,
                                        reply_tokens=6, repeats=1)
    assert len(replies) == 1 and len(replies[0]) == 6
    # all of the reply but its last token (picked, never fed) was resident
    assert ttft["reused_tokens"] == len(history) + 6 - 1
    assert ttft["prompt_tokens"] == len(history) + 6 + len(tail)

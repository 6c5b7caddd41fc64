"""``mobizo-bench serve --quantize``: parsing, refusals before any export, the scheme table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.bench import serve
from agent.bench.cli import main as bench_main
from agent.errors import ExportError


def test_schemes_parse_in_order() -> None:
    assert serve.parse_schemes("none,8da8w") == ("none", "8da8w")
    assert serve.parse_schemes(" 8da4w , none ") == ("8da4w", "none")


@pytest.mark.parametrize("text, says", [
    ("int3", "unknown scheme(s) 'int3'; give a comma-separated list of none, 8da8w, 8da4w"),
    ("", "(none given)"),
    ("none,none", "listed twice"),
])
def test_bad_scheme_lists_are_refused(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        serve.parse_schemes(text)
    assert says in str(err.value)


def test_cli_refuses_an_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main(["serve", "--quantize", "none,int3"])
    assert exit_.value.code == 2
    assert "unknown scheme(s) 'int3'" in capsys.readouterr().err


def test_cli_needs_exactly_one_of_bundle_or_quantize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_main(["serve"]) == 1
    assert "give --bundle DIR" in capsys.readouterr().err
    assert bench_main(["serve", "--bundle", str(tmp_path), "--quantize", "none"]) == 1
    assert "--bundle and --quantize exclude each other" in capsys.readouterr().err


def test_starter_dims_allow_int4() -> None:
    assert serve.starter_int4_problem() is None


def test_int4_on_an_unfit_starter_is_refused_before_any_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from exporter import starter

    monkeypatch.setitem(starter.STARTER_CONFIG, "intermediate_size", 500)

    def no_export(*_a: object, **_k: object) -> Path:
        raise AssertionError("exported before refusing")

    monkeypatch.setattr(serve, "starter_bundle", no_export)
    with pytest.raises(ExportError, match="intermediate_size is 500; drop 8da4w"):
        serve.compare_schemes(("none", "8da4w"), tmp_path)


def _result(gen: float, identical: bool) -> dict:
    return {"prompt_tokens": 64, "gen_tokens": 64, "threads": 2, "cpus": 2, "load_avg_1m": 1.0,
            "service": {"prompt_tok_s": 900.0, "gen_tok_s": gen, "end_to_end_s": 0.5},
            "eager": {"prompt_tok_s": 500.0, "gen_tok_s": 40.0, "end_to_end_s": 1.0},
            "parity": {"identical": identical, "greedy_prefix_agreement": 10, "of": 64},
            "switch": {"all_p99_ms": 3.0, "failed_requests": 0},
            "targets": {}}


def test_scheme_table_has_one_row_per_scheme_with_the_ratio_to_none() -> None:
    table = serve.format_scheme_table({"none": _result(100.0, True),
                                       "8da8w": _result(150.0, False)})
    rows = [line for line in table.splitlines() if line.startswith("| ") and "scheme" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["none", "8da8w"]
    assert "| 150.0 | 1.50 |" in rows[1] and "| 100.0 | 1.00 |" in rows[0]
    assert "eager transformers (fp32) gen tok/s: 40.0" in table

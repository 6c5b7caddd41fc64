"""``mobizo-bench learn`` end to end on the session's starter bundle, on a tiny budget.

The real runtime and the real eager model; no fakes. One task, ZO methods that fit the
fixture's shapes (S in {1, 2, 4}, b = 2) plus the first-order baseline; a few steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent.bench import learn
from agent.bench.learn_methods import parse_method
from agent.bench.learn_report import check_targets, passes_gate

pytestmark = pytest.mark.runtime

REQUIRED = {"task", "method", "q", "batch", "start_loss", "final_loss", "final_accuracy",
            "forwards", "seconds", "seconds_to_mezo_final", "curve"}


def _args(bundle: Path, out: Path, tag: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    learn.add_arguments(parser)
    return parser.parse_args([
        "--bundle", str(bundle), "--tasks", "label-words", "--train-size", "8",
        "--heldout-size", "4", "--forwards", "24", "--eval-points", "2",
        "--methods", "mezo:q=1,b=2", "--methods", "prge-dual:q=2,b=2",
        "--methods", "fo:b=2,opt=adam",
        "--json", str(out / f"{tag}.json"), "--plot", str(out / f"{tag}.png"),
    ])


def _numbers(doc: dict) -> list[tuple]:
    """Everything that must reproduce (the seconds may not)."""
    return [(r["task"], r["name"], r["forwards"], r["start_loss"], r["final_loss"],
             r["final_accuracy"], r["final_token_accuracy"],
             tuple((p["forwards"], p["loss"], p["accuracy"]) for p in r["curve"]))
            for r in doc["results"]]


def test_tiny_learn_run_writes_json_and_png_and_reproduces(starter_bundle: Path,
                                                           tmp_path: Path, capsys) -> None:
    assert learn.main(_args(starter_bundle, tmp_path, "a")) == 0
    out = capsys.readouterr().out
    assert "mezo-q1-b2" in out and "prge-dual-q2-b2" in out
    assert "[MET ]" in out or "[MISS]" in out
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [r["method"] for r in doc["results"]] == ["mezo", "prge-dual", "fo-lora"]
    for r in doc["results"]:
        assert set(r) >= REQUIRED
        assert r["forwards"] == 24 and r["seconds"] > 0
        assert r["curve"][0]["forwards"] == 0 and r["curve"][-1]["forwards"] == 24
        assert 0.0 <= r["final_accuracy"] <= 1.0
    mezo = doc["results"][0]
    assert mezo["seconds_to_mezo_final"] is not None  # MeZO reaches its own final loss
    assert doc["targets"]
    png = (tmp_path / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    assert learn.main(_args(starter_bundle, tmp_path, "b")) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert _numbers(again) == _numbers(doc)


def test_missing_shape_is_an_actionable_error(starter_bundle: Path, tmp_path: Path,
                                              capsys) -> None:
    args = _args(starter_bundle, tmp_path, "c")
    args.methods = ["prge-dual:q=16,b=1"]
    assert learn.main(args) == 2
    err = capsys.readouterr().err
    assert "re-export" in err and "--slices 32" in err


def test_method_specs_and_gate() -> None:
    m = parse_method("prge-dual:q=4,b=4,lr=5e-3,eps=1e-3")
    assert (m.q, m.batch, m.lr, m.eps, m.forwards_per_step, m.slices) == (4, 4, 5e-3, 1e-3, 32, 8)
    assert parse_method("mezo:q=1,b=16").forwards_per_step == 32
    assert parse_method("prge-dual:q=16,b=1").forwards_per_step == 32
    assert parse_method("fo:b=16,opt=sgd").forwards_per_step == 16
    with pytest.raises(ValueError, match="expected e.g."):
        parse_method("adamw:b=2")
    with pytest.raises(ValueError, match="unknown or invalid key"):
        parse_method("mezo:z=1")
    assert passes_gate(2.0, 1.97, 0.01, "relative") and not passes_gate(2.0, 1.99, 0.01,
                                                                           "relative")
    assert passes_gate(2.0, 1.9, 0.1, "absolute")


def test_targets_are_judged_from_the_numbers() -> None:
    def row(method: str, q: int, start: float, final: float, sec: float, reach: float | None):
        return {"task": "t", "method": method, "name": f"{method}-q{q}", "q": q,
                "start_loss": start, "final_loss": final, "seconds": sec,
                "seconds_to_mezo_final": reach, "passes_eval_gate": final < start * 0.99}

    checks = check_targets([row("mezo", 1, 5.0, 4.0, 10.0, 9.0),
                            row("prge-dual", 4, 5.0, 3.9, 9.0, 4.0),
                            row("prge-dual", 16, 5.0, 4.1, 9.0, None)])
    met = {c["target"].split()[0] + str(i): c["met"] for i, c in enumerate(checks)}
    assert list(met.values()) == [True, True, False]  # q=16 ends above MeZO


def test_runs_on_a_users_own_data(starter_bundle: Path, tmp_path: Path) -> None:
    from agent.training.sample_data import generate_interactions, write_jsonl

    data = write_jsonl(tmp_path / "mine.jsonl", generate_interactions(30, seed=1))
    parser = argparse.ArgumentParser()
    learn.add_arguments(parser)
    args = parser.parse_args(["--bundle", str(starter_bundle), "--data", str(data),
                              "--methods", "mezo:q=1,b=2", "--forwards", "8",
                              "--eval-points", "1", "--json", str(tmp_path / "d.json")])
    assert learn.main(args) == 0
    (row,) = json.loads((tmp_path / "d.json").read_text())["results"]
    assert row["task"] == "file:mine.jsonl" and row["forwards"] == 8


def test_quantize_must_match_the_bundles_scheme(starter_bundle: Path, tmp_path: Path,
                                                capsys) -> None:
    args = _args(starter_bundle, tmp_path, "q")
    args.quantize = "8da8w"  # the fixture bundle is fp32: no silent requantization
    assert learn.main(args) == 2
    err = capsys.readouterr().err
    assert "exported with --quantize none" in err and "mobizo-export --quantize 8da8w" in err
    assert not (tmp_path / "q.json").exists()

"""``mobizo-bench learn --quantize``: parsing and the checks that run before any export."""

from __future__ import annotations

import argparse

import pytest

from agent.bench import learn, learn_setup
from agent.bench.learn_quant import (
    INT4_GROUP,
    SCHEMES,
    bundle_scheme_problem,
    scheme_problem,
    starter_linear_inputs,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    learn.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_parses_every_scheme_and_defaults_to_the_bundles_own() -> None:
    assert _parse().quantize is None
    for scheme in ("none", "8da8w", "8da4w"):
        assert _parse("--quantize", scheme).quantize == scheme
    assert SCHEMES == ("none", "8da8w", "8da4w")


def test_unknown_scheme_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit):
        _parse("--quantize", "int3")
    assert "8da8w" in capsys.readouterr().err  # argparse lists the choices


def test_int4_group_matches_the_exporter() -> None:
    from exporter.quantize import INT4_GROUP as EXPORTER_GROUP

    assert INT4_GROUP == EXPORTER_GROUP


def test_the_starter_admits_every_scheme() -> None:
    inputs = starter_linear_inputs()
    assert set(inputs) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"}
    assert all(k % INT4_GROUP == 0 for k in inputs.values())
    for scheme in SCHEMES:
        assert scheme_problem(scheme, inputs) is None


def test_int4_on_a_linear_that_does_not_group_says_what_to_use() -> None:
    msg = scheme_problem("8da4w", {"q_proj": 48, "down_proj": 64})
    assert msg is not None and "q_proj has 48" in msg and "--quantize 8da8w" in msg
    assert "down_proj" not in msg
    assert scheme_problem("8da8w", {"q_proj": 48}) is None
    assert "choose one of" in (scheme_problem("int3", {}) or "")


def test_starter_export_is_refused_before_any_work(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(learn_setup, "starter_linear_inputs", lambda: {"o_proj": 40})
    with pytest.raises(ValueError, match="o_proj has 40"):
        learn_setup.starter_bundle([], max_length=16, lora_layers="all", rank=4,
                             cache_dir=tmp_path, quantize="8da4w")
    assert not any(tmp_path.iterdir())  # nothing exported


def test_a_bundle_of_another_scheme_is_refused_with_what_to_do() -> None:
    assert bundle_scheme_problem(None, "8da8w", "b") is None  # measure the bundle as it is
    assert bundle_scheme_problem("8da8w", "8da8w", "b") is None
    msg = bundle_scheme_problem("8da4w", "none", "build/x")
    assert msg is not None
    assert "exported with --quantize none" in msg and "mobizo-export --quantize 8da4w" in msg


def test_first_order_refuses_a_quantized_base() -> None:
    """torchao's quantized linears pass no input gradient: autograd would be silently wrong."""
    import torch

    from agent.bench.learn_eager import EagerModel

    model = EagerModel.__new__(EagerModel)  # only the scheme matters for the guard
    model.scheme = "8da8w"
    assert not model.differentiable
    with pytest.raises(ValueError, match=r"quantized \(8da8w\)"):
        model.loss(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4), torch.zeros(1, 8))
    model.scheme = "none"
    assert model.differentiable

"""The eval gate: publish only a candidate that beats the active adapter by the margin."""

from __future__ import annotations

import math

import pytest

from agent.core.eval_gate import judge, threshold_of


@pytest.mark.parametrize(
    ("candidate", "active", "margin", "mode", "publish"),
    [
        (1.80, 2.00, 0.05, "relative", True),     # 10% better, needs 5%
        (1.95, 2.00, 0.05, "relative", False),    # 2.5% better, needs 5%
        (1.90, 2.00, 0.05, "relative", True),     # exactly the threshold: <= publishes
        (1.90, 2.00, 0.10, "absolute", True),     # exactly 0.1 better
        (1.95, 2.00, 0.10, "absolute", False),
        (2.00, 2.00, 0.0, "relative", False),     # a tie is not an improvement
        (1.999, 2.00, 0.0, "relative", True),
        (2.50, 2.00, 0.0, "absolute", False),     # worse
    ],
)
def test_gate_table(candidate: float, active: float, margin: float, mode: str,
                    publish: bool) -> None:
    result = judge(candidate, active, margin=margin, mode=mode, examples=10)  # type: ignore[arg-type]
    assert result.publish is publish, result.reason
    assert result.threshold == pytest.approx(threshold_of(active, margin, mode))  # type: ignore[arg-type]
    assert ("beats" in result.reason) is publish


def test_diverged_candidate_is_rejected() -> None:
    for bad in (math.nan, math.inf):
        result = judge(bad, 2.0, margin=0.01, examples=10)
        assert not result.publish
        assert "diverged" in result.reason
        assert result.as_dict()["candidate_loss"] is None  # JSON-safe


def test_too_few_examples_is_rejected_whatever_the_numbers() -> None:
    result = judge(0.1, 5.0, margin=0.01, examples=1, min_examples=4)
    assert not result.publish
    assert "only 1 held-out examples" in result.reason


def test_broken_active_adapter_loses_to_any_finite_candidate() -> None:
    assert judge(3.0, math.nan, margin=0.01, examples=10).publish


def test_improvement_and_reason_carry_the_numbers() -> None:
    result = judge(1.5, 2.0, margin=0.1, examples=8)
    assert result.improvement == pytest.approx(0.25)
    assert "1.5000" in result.reason and "2.0000" in result.reason and "25.0%" in result.reason
    doc = result.as_dict()
    assert doc["publish"] is True and doc["examples"] == 8 and doc["mode"] == "relative"


@pytest.mark.parametrize(("margin", "mode"), [(-0.1, "absolute"), (1.0, "relative")])
def test_margin_out_of_range(margin: float, mode: str) -> None:
    with pytest.raises(ValueError):
        judge(1.0, 2.0, margin=margin, mode=mode, examples=10)  # type: ignore[arg-type]

"""The target window: packing a loss mask into the train program's static K positions."""

import pytest
import torch

from agent.core.targets import target_window


def test_packs_targets_in_order_with_their_weights():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 0, 0.5, 1]])
    w = target_window(mask, 3)
    # position p predicts token p + 1: targets at tokens 2,3 → positions 1,2
    assert w.positions.tolist() == [[1, 2, 0], [0, 2, 3]]
    assert w.weights.tolist() == [[1, 1, 0], [1, 0.5, 1]]
    assert w.dropped == 0


def test_column_zero_is_never_a_target():
    w = target_window(torch.tensor([[1.0, 0, 1]]), 2)
    assert w.positions.tolist() == [[1, 0]] and w.weights.tolist() == [[1, 0]]


def test_long_rows_keep_their_first_targets_and_count_the_rest():
    w = target_window(torch.ones(2, 6), 3)
    assert w.positions.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert w.dropped == 2 * (5 - 3)


def test_empty_rows_give_zero_weights():
    w = target_window(torch.zeros(1, 4), 2)
    assert w.weights.sum() == 0


def test_rejects_an_empty_window():
    with pytest.raises(ValueError, match="at least 1"):
        target_window(torch.ones(1, 4), 0)

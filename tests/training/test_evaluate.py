"""heldout_losses: token-weighted over batches, adapters grouped into slices, padding inert."""

from __future__ import annotations

import numpy as np
import pytest

from agent.training.data import Example
from agent.training.evaluate import heldout_losses


class MaskedMean:
    """Per-slice mean over the batch's target tokens of (B[token] − 1)²."""

    def __init__(self, slices: int, batch: int) -> None:
        self.slices, self.batch = slices, batch

    def losses(self, tokens, loss_mask, lora_b):
        assert tokens.shape[0] == self.batch and lora_b.shape[0] == self.slices
        vals = (lora_b.double()[:, tokens] - 1.0) ** 2
        m = loss_mask.double()
        return ((vals * m).sum(dim=(1, 2)) / m.sum().clamp_min(1)).float()


def _ex(tokens: list[int], targets: int) -> Example:
    t = np.array(tokens, dtype=np.int64)
    m = np.zeros(len(tokens), dtype=np.float32)
    m[len(tokens) - targets:] = 1
    return Example(str(tokens), t, m, False)


@pytest.mark.parametrize("slices,batch", [(1, 1), (2, 2), (4, 2), (2, 3)])
def test_token_weighted_and_grouped(slices, batch):
    examples = [_ex([0, 1, 2, 3], 3), _ex([0, 4, 5, 6], 1), _ex([0, 7, 8, 9], 2)]
    adapters = [np.linspace(0, 2, 10, dtype=np.float32) * k for k in (0.0, 0.5, 1.0)]
    got = heldout_losses(MaskedMean(slices, batch), examples, adapters)
    for a, loss in zip(adapters, got, strict=True):
        per_token = [(a[t] - 1.0) ** 2 for e in examples
                     for t, m in zip(e.tokens, e.mask, strict=True) if m]
        assert loss == pytest.approx(float(np.mean(per_token)), rel=1e-6)
    assert np.isnan(heldout_losses(MaskedMean(1, 1), [], adapters[:1])[0])  # nothing to score

"""The loss window of a train program: which positions need logits at all.

The LM head is the largest matmul of a small model (32000 × 768 on the 110M shape: as much
compute as 3.5 decoder blocks), and P-RGE runs it once per slice. The loss only needs logits
where a token is a target — the response, not the prompt — so the train program takes the
target positions instead of a dense mask and gathers the hidden states there before the head
(exporter/model.py). Its shapes must be static (DESIGN §3), so each bundle has a fixed window
of ``max_targets`` positions per sequence; unused entries carry weight 0.

``loss_mask[:, t] = w`` makes token t a target with weight w, predicted from position t-1
(column 0 is never a target). A row with more targets than the window keeps its first
``max_targets`` (the start of the response) and the rest are counted as dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TargetWindow(NamedTuple):
    positions: Tensor  # [b, K] int64: position p predicts token p + 1
    weights: Tensor  # [b, K] float32: the mask value of that target, 0 for unused entries
    dropped: int  # targets beyond the window (not part of the loss)


def target_window(loss_mask: Tensor, max_targets: int) -> TargetWindow:
    """Pack the targets of ``loss_mask`` [b, T] into a window of ``max_targets`` per row."""
    if max_targets < 1:
        raise ValueError(f"max_targets must be at least 1, got {max_targets}")
    mask = torch.as_tensor(loss_mask, dtype=torch.float32)[:, 1:]
    is_target = mask != 0
    rank = is_target.cumsum(dim=1) - 1  # index of each target within its row
    keep = is_target & (rank < max_targets)
    rows, cols = keep.nonzero(as_tuple=True)
    slots = rank[rows, cols]
    b = mask.shape[0]
    positions = torch.zeros(b, max_targets, dtype=torch.long)
    weights = torch.zeros(b, max_targets, dtype=torch.float32)
    positions[rows, slots] = cols
    weights[rows, slots] = mask[rows, cols]
    dropped = int(is_target.sum()) - int(keep.sum())
    return TargetWindow(positions, weights, dropped)

"""Per-seed scalar accumulators: what a device learnt in a round, and the server's sum of them.

A device adds each step's projected gradient g_i to the slot of the pool seed that drew z_i
(FedKSeed's accumulator, Qin et al. 2024 §4). Its round is then K numbers, mostly zero, sent
as sparse (index, value) pairs. Each value is clipped to ``[-clip, clip]`` before it leaves
the device, so one device moves the global adapter by a bounded amount whatever it sends.

The server combines the devices' accumulators weighted by their example counts,
``A[k] = sum_d (n_d / sum n) * acc_d[k]``: the update every device then replays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agent.federated.privacy import add_noise


@dataclass(frozen=True)
class SparseAccumulator:
    """The non-zero slots of a K-slot accumulator, indices ascending."""

    size: int
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def dense(self) -> torch.Tensor:
        """The float64 [K] accumulator these pairs stand for."""
        out = torch.zeros(self.size, dtype=torch.float64)
        if self.indices:
            out[torch.tensor(self.indices, dtype=torch.long)] = torch.tensor(
                self.values, dtype=torch.float64)
        return out

    @classmethod
    def from_dense(cls, acc: torch.Tensor) -> SparseAccumulator:
        """The non-zero slots of a dense [K] accumulator."""
        nz = torch.nonzero(acc, as_tuple=False).reshape(-1)
        return cls(int(acc.numel()), tuple(int(i) for i in nz),
                   tuple(float(acc[i]) for i in nz))


class Accumulator:
    """A device's round: K float64 slots, g added to the slot of its seed."""

    def __init__(self, size: int) -> None:
        self.slots = torch.zeros(size, dtype=torch.float64)
        self.directions = 0  # how many g were added (the round's q * steps)
        self.drawn: set[int] = set()  # the slots the steps drew (public: pool, device, step)

    def add(self, index: int, g: float) -> None:
        """Add projected gradient ``g`` of the direction drawn from pool seed ``index``."""
        if math.isfinite(g):  # a NaN loss is skipped, as in the local ZO step
            self.slots[index] += g
        self.directions += 1
        self.drawn.add(index)

    def sparse(self, clip: float | None, noise: float = 0.0) -> SparseAccumulator:
        """The slots to send: clipped to ``|acc[k]| <= clip`` (None or 0: unclipped).

        With ``noise`` > 0 (and a clip) every drawn slot is sent with Gaussian noise
        (agent/federated/privacy.py), zero or not, so the zeros leak nothing either.
        """
        acc = self.slots.clone()
        if clip:
            acc.clamp_(-clip, clip)
        if noise > 0 and clip:
            idx = sorted(self.drawn)
            noisy = add_noise(acc[idx], clip, noise, len(idx))
            return SparseAccumulator(acc.numel(), tuple(idx), tuple(float(v) for v in noisy))
        return SparseAccumulator.from_dense(acc)


def aggregate(replies: Sequence[tuple[SparseAccumulator, int]], size: int) -> torch.Tensor:
    """The example-weighted mean ``A = sum_d (n_d / sum n) acc_d`` of ``(acc, n_d)`` replies.

    The sum runs in reply order over float64 slots; the server sorts replies by node id first
    so the same replies always give the same bits.

    Raises:
        ValueError: no replies, a zero total count, or an accumulator of another size.
    """
    total = sum(n for _, n in replies)
    if not replies or total <= 0:
        raise ValueError("nothing to aggregate: no replies with examples")
    out = torch.zeros(size, dtype=torch.float64)
    for acc, n in replies:
        if acc.size != size:
            raise ValueError(f"accumulator of {acc.size} slots, the pool has {size}")
        out.add_(acc.dense(), alpha=n / total)
    return out

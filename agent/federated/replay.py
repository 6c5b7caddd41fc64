"""Rebuilding the global adapter from the rounds' seeds and scalars, identically everywhere.

A local P-RGE step updates ``B <- B - lr * (1/q) * sum_i g_i z_i``; over a round every z is
one of the pool's K seeds, so a device's whole round is ``B - (lr/q) * sum_k acc[k] z_k``.
The global adapter moves by the aggregated accumulator A the same way:

    B_global(r) = B_global(r-1) - (lr / q) * sum_k A_r[k] * z_k(pool_r)

Every device (and the server, if it wants the dense adapter) runs this replay over the same
float64 A and the same pinned generator, in the same slot order, so every copy of the global
adapter is bit-identical. A device keeps the global adapter of the last round it replayed
(the cache): a new round costs only that round's seeds. A device that missed rounds replays
each missing one in order, or is sent the dense adapter when too far behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agent.federated.accumulate import SparseAccumulator
from agent.federated.pool import SeedPool


@dataclass(frozen=True)
class RoundUpdate:
    """What the server publishes after round ``round``: enough to replay it anywhere."""

    round: int
    pool: SeedPool
    update: SparseAccumulator  # the aggregated A, sparse
    lr: float
    q: int


def replay(lora_b: torch.Tensor, upd: RoundUpdate,
           scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``B - (lr/q) * sum_k A[k] z_k``: one round replayed onto a copy of flat B [P]."""
    out = lora_b.detach().clone().to(torch.float32)
    p = out.numel()
    z = scratch if scratch is not None else torch.empty(p, dtype=torch.float32)
    for k, a in zip(upd.update.indices, upd.update.values, strict=True):
        if a == 0.0:
            continue
        upd.pool.direction(k, p, out=z)
        out.sub_(z, alpha=float(upd.lr * a / upd.q))  # the same fused pass as zo.apply_update
    return out


class CatchUpError(ValueError):
    """A round cannot be replayed here: it is not the next one (ask for the dense adapter)."""


@dataclass
class GlobalAdapter:
    """A device's copy of the global adapter: the last replayed round and its B.

    Attributes:
        lora_b: the global flat B after ``round``.
        round: the last round replayed (0: the bundle's initial adapter).
    """

    lora_b: torch.Tensor
    round: int = 0
    _scratch: torch.Tensor | None = field(default=None, repr=False)

    def apply(self, upd: RoundUpdate) -> torch.Tensor:
        """Replay round ``upd.round`` if it is the next one; an old round is a no-op.

        Returns:
            the change of the global B (new minus old).

        Raises:
            CatchUpError: the round skips rounds this copy never replayed.
        """
        if upd.round <= self.round:
            return torch.zeros_like(self.lora_b)  # replayed already (a resent message)
        if upd.round != self.round + 1:
            raise CatchUpError(f"round {upd.round} follows round {self.round + 1}, which this "
                               "device never replayed; replay the missing rounds first or "
                               "load the dense global adapter")
        if self._scratch is None or self._scratch.numel() != self.lora_b.numel():
            self._scratch = torch.empty(self.lora_b.numel(), dtype=torch.float32)
        new_b = replay(self.lora_b, upd, self._scratch)
        delta = new_b - self.lora_b
        self.lora_b, self.round = new_b, upd.round
        return delta

    def catch_up(self, history: list[RoundUpdate]) -> None:
        """Replay every round of ``history`` after this copy's round, in order."""
        for upd in sorted(history, key=lambda u: u.round):
            self.apply(upd)

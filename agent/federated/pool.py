"""A federated round's shared pool of K seeds and the directions they stand for (FedKSeed).

FedKSeed (Qin et al., ICML 2024) shares a pool of K candidate seeds per round; every
zeroth-order direction a device draws is one of them, so a device's whole round is described
by K accumulated scalars. Here a pool is ``(base, K)``: seed k of the pool stands for

    z_k = randn(P), drawn by ``torch.Generator("cpu").manual_seed(mix(base, k))``

which is exactly :func:`agent.core.zo_directions.perturbation` ``(base, k, P)``: the same
SplitMix64 mixing and the same pinned CPU generator as the ordinary ZO steps, so every
device (and the server, and a device rejoining later) regenerates bit-identical z for a seed.
:data:`GENERATOR` names that generator; a round whose generator differs is refused.

Which pool seeds a step uses is also a pure function, of (pool, device, step, i), so a
device's round can be replayed or audited from its inputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# GENERATOR lives with the draw it names, below the exporter, which records it in manifests
from agent.core.zo_directions import GENERATOR as GENERATOR
from agent.core.zo_directions import perturbation, step_seed

MAX_POOL = 1 << 16  # K is at most 65536: an index fits in 16 bits on the wire


@dataclass(frozen=True)
class SeedPool:
    """A round's K candidate seeds, ``base`` mixed with 0..K-1.

    Attributes:
        base: the round's seed base (the server draws a fresh one per round).
        size: K, the number of candidate seeds (FedKSeed uses 1024-4096).
    """

    base: int
    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_POOL:
            raise ValueError(f"a seed pool holds 1..{MAX_POOL} seeds, got {self.size}")
        if not 0 <= self.base < (1 << 63):
            raise ValueError(f"the pool's seed base must be in [0, 2**63), got {self.base}")

    def direction(self, index: int, num_params: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """z for pool seed ``index``: float32 [P], bit-identical on every device."""
        if not 0 <= index < self.size:
            raise IndexError(f"pool index {index} outside 0..{self.size - 1}")
        return perturbation(self.base, index, num_params, out=out)

    def step_indices(self, device_salt: int, step: int, q: int) -> tuple[int, ...]:
        """The pool indices of a step's q directions on one device (distinct when q <= K).

        A pure function of (pool, device salt, step): devices draw different seeds from the
        same pool (their salts differ), and a step's q directions are distinct so the P-RGE
        estimate keeps q independent queries.
        """
        if q > self.size:
            raise ValueError(f"q={q} directions need a pool of at least q seeds, K={self.size}")
        seed = step_seed(self.base ^ (device_salt & ((1 << 63) - 1)), step)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        order = torch.randperm(self.size, generator=gen)[:q]
        return tuple(int(v) for v in order)

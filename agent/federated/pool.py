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

FedKSeed-Pro (Qin et al. 2024, §4.3, non-uniform seed sampling): with one pool kept for the
whole run, seeds whose aggregated scalar gradients were large matter more, so steps draw
them more often. The server scores each seed by the mean amplitude of its history of
aggregated values, ``psi_k = mean |clamp(A_r[k], -clip, clip)|`` over ``[0] + [A_r[k] for
rounds r that drew k]``, normalizes psi to [0, 1] (min-max) and sends it quantized to 8 bits
(:func:`importance_levels`: one byte per seed); every device turns the same bytes into the
same ``p = softmax(level / 255)`` (:meth:`SeedPool.probabilities`) and draws its q distinct
indices per step from p with its step's generator. The most important seed is then at most
e times as likely as the least, as in the paper's softmax over normalized amplitudes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

# GENERATOR lives with the draw it names, below the exporter, which records it in manifests
from agent.core.zo_directions import GENERATOR as GENERATOR
from agent.core.zo_directions import perturbation, step_seed

MAX_POOL = 1 << 16  # K is at most 65536: an index fits in 16 bits on the wire
LEVELS = 255  # FedKSeed-Pro's importance is sent as one byte per seed, 0..LEVELS


@dataclass(frozen=True)
class SeedPool:
    """A round's K candidate seeds, ``base`` mixed with 0..K-1.

    Attributes:
        base: the round's seed base (the server draws a fresh one per round).
        size: K, the number of candidate seeds (FedKSeed uses 1024-4096).
        levels: FedKSeed-Pro's importance of each seed, 0..255 (None: uniform draws).
    """

    base: int
    size: int
    levels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_POOL:
            raise ValueError(f"a seed pool holds 1..{MAX_POOL} seeds, got {self.size}")
        if not 0 <= self.base < (1 << 63):
            raise ValueError(f"the pool's seed base must be in [0, 2**63), got {self.base}")
        if self.levels is not None and (len(self.levels) != self.size or any(
                not 0 <= v <= LEVELS for v in self.levels)):
            raise ValueError(f"a pool of {self.size} seeds needs {self.size} importance "
                             f"levels in 0..{LEVELS}")

    def probabilities(self) -> torch.Tensor:
        """Each seed's probability of being drawn: float64 [K], ``softmax(level / 255)``."""
        if self.levels is None:
            return torch.full((self.size,), 1.0 / self.size, dtype=torch.float64)
        levels = torch.tensor(self.levels, dtype=torch.float64)
        return torch.softmax(levels / LEVELS, dim=0)

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
        estimate keeps q independent queries. With FedKSeed-Pro levels the q indices are
        drawn without replacement with :meth:`probabilities` instead of uniformly.
        """
        if q > self.size:
            raise ValueError(f"q={q} directions need a pool of at least q seeds, K={self.size}")
        seed = step_seed(self.base ^ (device_salt & ((1 << 63) - 1)), step)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        if self.levels is not None:
            drawn = torch.multinomial(self.probabilities(), q, replacement=False,
                                      generator=gen)
            return tuple(int(v) for v in drawn)
        order = torch.randperm(self.size, generator=gen)[:q]
        return tuple(int(v) for v in order)


def importance_levels(rounds: Iterable[tuple[Sequence[int], Sequence[float]]], size: int,
                      clip: float) -> tuple[int, ...]:
    """FedKSeed-Pro's importance of each of ``size`` seeds from the rounds' aggregates.

    Args:
        rounds: each round's sparse aggregate as (indices, values), over the same pool.
        size: K.
        clip: the run's clip; amplitudes are clamped to it as in the paper.

    Returns:
        K levels in 0..255: the min-max normalized mean amplitude, quantized (all 0 when
        every seed scores the same, i.e. uniform draws).
    """
    total = torch.zeros(size, dtype=torch.float64)
    count = torch.ones(size, dtype=torch.float64)  # each history starts with one 0.0
    for indices, values in rounds:
        if not indices:
            continue
        idx = torch.tensor(list(indices), dtype=torch.long)
        amp = torch.tensor(list(values), dtype=torch.float64).clamp(-clip, clip).abs()
        total.index_add_(0, idx, amp)
        count.index_add_(0, idx, torch.ones_like(amp))
    psi = total / count
    spread = float(psi.max() - psi.min())
    if spread <= 0.0:
        return (0,) * size
    norm = (psi - psi.min()) / spread
    return tuple(int(v) for v in torch.round(norm * LEVELS).to(torch.long))

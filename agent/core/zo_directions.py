"""Where a ZO step's random directions come from, and the host memory a step reuses.

The step seed ``s_t = mix(run_seed, t)`` and each direction ``z_i = randn(P)`` seeded by
``mix(s_t, i)`` are pure functions (agent/core/zo.py has the estimator and its maths), so a
resumed run redraws them and no checkpoint ever holds a z. :class:`StepBuffers` keeps the
B stack and, within a budget, a P-RGE step's q directions between its losses and its update.
"""

from __future__ import annotations

import torch

from agent.core.zo_settings import Mode

_MASK64 = (1 << 64) - 1

# What draws a z (:func:`perturbation`): the generator, its seeding and the dtype, named so
# that two parties can check they draw the same directions for a seed. A federated round's
# devices and server compare it (agent/federated/pool.py), and a bundle's manifest records
# the one its exporter had (``zo_generator``): torch does not promise the same randn bits
# across versions, so a version change is a different generator.
GENERATOR = f"torch-{torch.__version__.split('+')[0]}:cpu-generator:splitmix64:randn-float32"


def _splitmix64(x: int) -> int:
    """SplitMix64 finalizer (Steele et al. 2014): a cheap, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(run_seed: int, step: int) -> int:
    """The seed s_t of step ``step`` of a run: a pure function of (run seed, step)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return _splitmix64(_splitmix64(run_seed & _MASK64) ^ step) & ((1 << 63) - 1)


def perturbation(seed_t: int, index: int, num_params: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """z_i = randn(P) for query ``index`` of the step with seed ``seed_t`` (float32, CPU).

    With ``out`` (a float32 [P] view) the values are written there: the same bits, no new
    allocation.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_splitmix64(seed_t ^ _splitmix64(index + 1)) & ((1 << 63) - 1))
    if out is None:
        return torch.randn(num_params, generator=gen, dtype=torch.float32)
    return torch.randn(num_params, generator=gen, dtype=torch.float32, out=out)


# Keeping a P-RGE step's q directions for its update saves drawing them again (~7 ns per
# value on these CPUs: 2 % of a q = 4 step of the 110M shape) but holds q·P floats beside the
# 2q-row B stack. Past this budget memory is the scarcer resource: a board fine-tunes a model
# that barely fits (a 1.1B Llama's q = 4 directions are 100 MB), while there the draws are
# ~1 % of a step, since a step's compute grows with the model's width and P only with its rank.
DIRECTIONS_BUDGET_BYTES = 32 * 1024 * 1024


class StepBuffers:
    """Host memory a step reuses: the B stack [S, P] and the directions (q, or one) [·, P].

    A 1.5M-value B makes each row 6 MB; allocating the stack, the directions and the perturbed
    rows afresh every step cost page faults and copies: 260 ms of host work per q = 4 step on
    the busy 2-core CI machine (~15 % of a 110M P-RGE step), against 65 ms with reused
    buffers, fused row writes and the update reusing the drawn z (shared/DESIGN.md §3 budgets
    host work at 1–2 %). Callers that run many steps (the trainer, the benchmarks) keep one
    instance; the values computed are bit-identical either way, and whether or not the
    directions are kept (``directions_budget`` bytes, see :data:`DIRECTIONS_BUDGET_BYTES`).
    """

    def __init__(self, directions_budget: int = DIRECTIONS_BUDGET_BYTES) -> None:
        self._tensors: dict[str, torch.Tensor] = {}
        self.directions_budget = directions_budget

    @property
    def nbytes(self) -> int:
        """Host memory held now."""
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def keeps_directions(self, q: int, num_params: int) -> bool:
        """Whether a P-RGE step keeps its q directions [q, P] for the update."""
        return q * num_params * 4 <= self.directions_budget

    def get(self, name: str, *shape: int) -> torch.Tensor:
        """The float32 buffer ``name`` of ``shape`` (contents undefined), reused when it fits."""
        have = self._tensors.get(name)
        if have is None or tuple(have.shape) != shape:
            have = torch.empty(*shape, dtype=torch.float32)
            self._tensors[name] = have
        return have


def step_keeps_directions(buffers: StepBuffers, mode: Mode, q: int, p: int) -> bool:
    """MeZO never keeps its directions (its users regenerate them); P-RGE within budget."""
    return mode != "mezo" and buffers.keeps_directions(q, p)


class Directions:
    """A step's z_i by index: drawn once up front when the buffers keep them, otherwise drawn
    again into one scratch row each time one is asked for (the same bits either way)."""

    def __init__(self, buffers: StepBuffers, seed_t: int, q: int, p: int, *, keep: bool) -> None:
        self.seed_t, self.p, self.kept = seed_t, p, keep
        self._rows = buffers.get("directions", q if self.kept else 1, p)
        if self.kept:
            for i in range(q):
                perturbation(seed_t, i, p, out=self._rows[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.kept:
            return self._rows[i]
        return perturbation(self.seed_t, i, self.p, out=self._rows[0])

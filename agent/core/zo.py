"""The MobiZO zeroth-order estimator (P-RGE, arXiv 2409.15520 §3), pure and runtime-free.

One step t, for a flat LoRA-B vector ``B`` [P] (shared/DESIGN.md §2):

1. step seed ``s_t = mix(run_seed, t)`` — a pure function, so a resumed run redraws it;
2. for i in 0..q−1: ``z_i = randn(P)`` from a ``torch.Generator`` seeded by ``mix(s_t, i)``;
   the z_i live only within their step (a checkpoint holds B and the step, never a z).
   MeZO draws one at a time and regenerates each for the update. P-RGE keeps the step's q
   directions for the update while they fit :data:`DIRECTIONS_BUDGET_BYTES`, and otherwise
   regenerates them too (see :class:`StepBuffers`);
3. losses ``L⁺_i = L(B + ε z_i)``, ``L⁻_i = L(B − ε z_i)`` on the same batch;
4. projected gradients ``g_i = (L⁺_i − L⁻_i) / (2ε)``, optionally clipped to ``|g_i| ≤ clip``;
5. ZO-SGD: ``B ← B − lr · (1/q) Σ_i g_i z_i``.

How the 2q losses are evaluated is the mode — the estimator is the same in all three, so for
the same seeds they give the same g_i up to the program's float rounding:

- ``mezo``: 2q sequential calls of one slice (the MeZO baseline, Malladi et al. 2023);
- ``prge``: P-RGE outer loop, two calls of q slices (all ``+``, then all ``−``);
- ``prge-dual``: P-RGE outer + inner loop, one call of 2q slices (``+`` rows 0..q−1,
  ``−`` rows q..2q−1).

A program may have more slices than a mode needs (one exported shape serves every smaller q):
the extra rows are filled with the unperturbed B and their losses ignored.

The loss function is anything with the :class:`LossFn` shape: the ExecuTorch ``TrainProgram``,
the eager reference, or an analytic function in the tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

# Re-exported with the ``X as X`` form: the literals and paper defaults live torch-free in
# zo_settings (the daemon validates jobs without torch); the seeds, directions and step
# buffers in zo_directions.
from agent.core.zo_directions import DIRECTIONS_BUDGET_BYTES as DIRECTIONS_BUDGET_BYTES
from agent.core.zo_directions import Directions, step_keeps_directions
from agent.core.zo_directions import StepBuffers as StepBuffers
from agent.core.zo_directions import perturbation as perturbation
from agent.core.zo_directions import step_seed as step_seed
from agent.core.zo_settings import DEFAULT_EPS as DEFAULT_EPS
from agent.core.zo_settings import DEFAULT_LR as DEFAULT_LR
from agent.core.zo_settings import DEFAULT_Q as DEFAULT_Q
from agent.core.zo_settings import DEFAULT_QUERY_BATCH as DEFAULT_QUERY_BATCH
from agent.core.zo_settings import MODES as MODES
from agent.core.zo_settings import SCHEDULES as SCHEDULES
from agent.core.zo_settings import Mode as Mode
from agent.core.zo_settings import Schedule as Schedule


@runtime_checkable
class LossFn(Protocol):
    """A batch of per-slice losses: ``losses(tokens[b,T], mask[b,T], lora_b[S,P]) -> [S]``.

    ``slices`` and ``batch`` are the one (S, b) shape the function accepts.
    """

    slices: int
    batch: int

    def losses(
        self, tokens: torch.Tensor, loss_mask: torch.Tensor, lora_b: torch.Tensor
    ) -> torch.Tensor: ...


def slices_needed(mode: Mode, q: int) -> int:
    """S of one call in ``mode``: 1 (mezo), q (prge) or 2q (prge-dual)."""
    if q < 1:
        raise ValueError(f"q must be >= 1, got {q}")
    if mode == "mezo":
        return 1
    if mode == "prge":
        return q
    if mode == "prge-dual":
        return 2 * q
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def calls_per_step(mode: Mode, q: int) -> int:
    """Program calls one step makes: 2q (mezo), 2 (prge) or 1 (prge-dual)."""
    return {"mezo": 2 * q, "prge": 2, "prge-dual": 1}[mode]


def _perturb_into(row: torch.Tensor, lora_b: torch.Tensor, z: torch.Tensor, eps: float,
                  sign: int) -> None:
    """Write ``B + sign·ε·z`` into ``row``: one fused pass, straight into the stack.

    Every mode builds its rows here, so the modes' rows are bit-identical and their g_i agree
    to the program's rounding (tested).
    """
    (torch.add if sign > 0 else torch.sub)(lora_b, z, alpha=eps, out=row)


class _Caller:
    """Calls ``fn`` on a stack and keeps the time spent inside it (the rest is host work)."""

    def __init__(self, fn: LossFn, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        self.fn, self.tokens, self.mask = fn, tokens, mask
        self.seconds = 0.0

    def __call__(self, stack: torch.Tensor, used: int) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn.losses(self.tokens, self.mask, stack)
        self.seconds += time.perf_counter() - t0
        return out.detach().to(torch.float64).reshape(-1)[:used]


@dataclass(frozen=True)
class Estimate:
    """The 2q losses of one step and the q projected gradients (before clipping)."""

    loss_plus: tuple[float, ...]
    loss_minus: tuple[float, ...]
    eps: float
    program_seconds: float = 0.0  # time inside the loss function's calls; the rest is host work

    @property
    def q(self) -> int:
        return len(self.loss_plus)

    @property
    def projected_grads(self) -> tuple[float, ...]:
        return tuple((p - m) / (2.0 * self.eps) for p, m in zip(self.loss_plus, self.loss_minus,
                                                                strict=True))

    @property
    def loss(self) -> float:
        """Mean of all L⁺ and L⁻: the step's loss (≈ L(B) to O(ε²))."""
        return (sum(self.loss_plus) + sum(self.loss_minus)) / (2 * self.q)


def estimate(
    fn: LossFn,
    mode: Mode,
    lora_b: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    seed_t: int,
    q: int,
    eps: float,
    buffers: StepBuffers | None = None,
) -> Estimate:
    """Evaluate the 2q perturbed losses of one step in ``mode``.

    Args:
        fn: the loss function; ``fn.slices`` must be at least :func:`slices_needed`.
        mode: how the losses are batched into calls (see module docstring).
        lora_b: current flat B, float32 [P].
        tokens: the step's batch [b, T] int64 (the same batch for every query).
        loss_mask: [b, T] float32, 1 where a token is a target.
        seed_t: the step seed (:func:`step_seed`).
        q: number of queries (random directions).
        eps: perturbation scale ε.
        buffers: host memory to reuse across steps (see :class:`StepBuffers`); after a
            ``prge``/``prge-dual`` call where ``buffers.keeps_directions(q, P)``,
            ``buffers.get("directions", q, P)`` holds the z_i, which :func:`zo_step` hands
            to the update instead of drawing them again.

    Raises:
        ValueError: if ``fn`` has too few slices for the mode.
    """
    if lora_b.dim() != 1:
        raise ValueError(f"lora_b must be a flat [P] vector, got shape {tuple(lora_b.shape)}")
    need = slices_needed(mode, q)
    if fn.slices < need:
        raise ValueError(f"mode {mode} with q={q} needs {need} slices, the program has "
                         f"{fn.slices}")
    p = lora_b.numel()
    buffers = buffers if buffers is not None else StepBuffers()
    call = _Caller(fn, tokens, loss_mask)
    stack = buffers.get("stack", fn.slices, p)
    # rows a mode leaves unused hold the unperturbed B; their losses are ignored
    stack[need:].copy_(lora_b.expand(fn.slices - need, p))
    zs = Directions(buffers, seed_t, q, p, keep=step_keeps_directions(buffers, mode, q, p))
    if mode == "mezo":  # MeZO as its users run it: one direction at a time
        plus, minus = [], []
        for i in range(q):
            z = zs[i]
            _perturb_into(stack[0], lora_b, z, eps, +1)
            plus.append(float(call(stack, 1)[0]))
            _perturb_into(stack[0], lora_b, z, eps, -1)
            minus.append(float(call(stack, 1)[0]))
        return Estimate(tuple(plus), tuple(minus), eps, call.seconds)
    if mode == "prge":
        for i in range(q):
            _perturb_into(stack[i], lora_b, zs[i], eps, +1)
        lp = call(stack, q)
        for i in range(q):
            _perturb_into(stack[i], lora_b, zs[i], eps, -1)
        lm = call(stack, q)
    else:  # prge-dual: + rows 0..q-1, − rows q..2q-1
        for i in range(q):
            z = zs[i]
            _perturb_into(stack[i], lora_b, z, eps, +1)
            _perturb_into(stack[q + i], lora_b, z, eps, -1)
        both = call(stack, 2 * q)
        lp, lm = both[:q], both[q:]
    return Estimate(tuple(float(v) for v in lp), tuple(float(v) for v in lm), eps,
                    call.seconds)


def clip_grads(grads: tuple[float, ...], clip: float | None) -> tuple[float, ...]:
    """Clip each |g_i| to ``clip`` (None or 0: no clipping). Non-finite g_i become 0."""
    out = []
    for g in grads:
        if not math.isfinite(g):
            g = 0.0  # a NaN/inf loss must not poison B; the step is skipped for this query
        if clip:
            g = max(-clip, min(clip, g))
        out.append(g)
    return tuple(out)


def apply_update(
    lora_b: torch.Tensor, grads: tuple[float, ...], *, seed_t: int, lr: float,
    directions: torch.Tensor | None = None, scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """ZO-SGD: return ``B − lr · (1/q) Σ g_i z_i``.

    Each z_i is regenerated from its seed unless ``directions`` [q, P] already holds them
    (the P-RGE modes draw all q for the perturbed stack); the result is the same either way.
    """
    out = lora_b.clone()
    q, p = len(grads), out.numel()
    if directions is None and scratch is None:
        scratch = torch.empty(p, dtype=torch.float32)
    for i, g in enumerate(grads):
        if g == 0.0:
            continue
        z = directions[i] if directions is not None else perturbation(seed_t, i, p, out=scratch)
        out.sub_(z, alpha=float(lr * g / q))  # one fused pass per direction
    return out


def learning_rate(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    schedule: Schedule = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """lr at ``step`` (0-based): linear warmup, then constant / linear / cosine decay.

    The decay runs from the end of warmup to ``total_steps`` and floors at
    ``base_lr · min_lr_ratio``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    floor = base_lr * min_lr_ratio
    if schedule == "linear":
        return floor + (base_lr - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class StepResult:
    """What one ZO step did: the new B and the numbers the metrics line reports."""

    lora_b: torch.Tensor
    estimate: Estimate
    projected_grads: tuple[float, ...]  # after clipping: the ones the update used
    lr: float
    seed_t: int


def zo_step(
    fn: LossFn,
    mode: Mode,
    lora_b: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    run_seed: int,
    step: int,
    q: int,
    eps: float,
    lr: float,
    clip: float | None = None,
    buffers: StepBuffers | None = None,
) -> StepResult:
    """One full MobiZO step: seeds → 2q losses → g_i → clipped → ZO-SGD update.

    Pass the same ``buffers`` to every step of a run to reuse its host memory.
    """
    buffers = buffers if buffers is not None else StepBuffers()
    seed_t = step_seed(run_seed, step)
    est = estimate(fn, mode, lora_b, tokens, loss_mask, seed_t=seed_t, q=q, eps=eps,
                   buffers=buffers)
    grads = clip_grads(est.projected_grads, clip)
    p = lora_b.numel()
    if not step_keeps_directions(buffers, mode, q, p):  # drawn again, one at a time
        new_b = apply_update(lora_b, grads, seed_t=seed_t, lr=lr,
                             scratch=buffers.get("directions", 1, p)[0])
    else:
        new_b = apply_update(lora_b, grads, seed_t=seed_t, lr=lr,
                             directions=buffers.get("directions", q, p))
    return StepResult(new_b, est, grads, lr, seed_t)


@dataclass
class AnalyticLoss:
    """A :class:`LossFn` from a plain function of B: ``f(B [P]) -> scalar``; ignores tokens.

    For tests and benchmarks of the estimator without a model.
    """

    f: Callable[[torch.Tensor], torch.Tensor]
    slices: int = 1
    batch: int = 1
    calls: int = 0

    def losses(
        self, tokens: torch.Tensor, loss_mask: torch.Tensor, lora_b: torch.Tensor
    ) -> torch.Tensor:
        if lora_b.shape[0] != self.slices:
            raise ValueError(f"expected {self.slices} slices, got {lora_b.shape[0]}")
        self.calls += 1
        return torch.stack([self.f(row) for row in lora_b]).to(torch.float32)

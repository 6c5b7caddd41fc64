"""A device's part of a round: P-RGE steps whose directions come from the round's seed pool.

The estimator is agent.core.zo's (arXiv 2409.15520 §3): ``g_i = (L(B + eps z_i) -
L(B - eps z_i)) / (2 eps)`` on one batch, clipped, then ``B <- B - (lr/q) sum_i g_i z_i``;
only the source of z_i differs: pool seed ``pool.step_indices(salt, t, q)[i]`` instead of the
run's own step seed. Each g_i is also added to its seed's accumulator slot, so the round's
total update is exactly ``-(lr/q) sum_k acc[k] z_k`` (agent/federated/replay.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from agent.core import zo
from agent.federated.accumulate import Accumulator
from agent.federated.pool import SeedPool

Batch = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (tokens, loss mask)


@dataclass(frozen=True)
class RoundSettings:
    """The ZO settings of a round, the same on every device (sent by the server)."""

    steps: int
    q: int
    lr: float
    eps: float
    clip: float | None
    mode: zo.Mode = "prge"


@dataclass
class LocalRound:
    """What a device's round produced: its new B, its accumulator and its mean train loss."""

    lora_b: torch.Tensor
    accumulator: Accumulator
    train_loss: float
    forwards: int


def pool_estimate(fn: zo.LossFn, mode: zo.Mode, lora_b: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor, zs: torch.Tensor, eps: float,
                  stack: torch.Tensor) -> tuple[list[float], list[float]]:
    """The q (L+, L-) pairs for directions ``zs`` [q, P], batched as ``mode`` says.

    The rows are built as :func:`agent.core.zo.estimate` builds them (one fused add or sub
    into the stack), so every mode gives the same g_i up to the program's float rounding:
    ``mezo`` calls one slice 2q times, ``prge`` q slices twice, ``prge-dual`` 2q slices once.

    Raises:
        ValueError: the program has fewer slices than the mode needs.
    """
    q, p = zs.shape
    need = zo.slices_needed(mode, q)
    if fn.slices < need:
        raise ValueError(f"a federated step in mode {mode} with q={q} needs {need} slices; "
                         f"the program has {fn.slices}")
    stack[need:].copy_(lora_b.expand(fn.slices - need, p))

    def call(used: int) -> torch.Tensor:
        return fn.losses(tokens, mask, stack).detach().to(torch.float64).reshape(-1)[:used]

    if mode == "mezo":  # MeZO as its users run it: one direction, one sign per call
        plus, minus = [], []
        for i in range(q):
            torch.add(lora_b, zs[i], alpha=eps, out=stack[0])
            plus.append(float(call(1)[0]))
            torch.sub(lora_b, zs[i], alpha=eps, out=stack[0])
            minus.append(float(call(1)[0]))
        return plus, minus
    off = 0 if mode == "prge" else q
    for i in range(q):
        torch.add(lora_b, zs[i], alpha=eps, out=stack[i])
    if mode == "prge":
        lp = call(q)
    for i in range(q):
        torch.sub(lora_b, zs[i], alpha=eps, out=stack[off + i])
    out = call(off + q)
    if mode == "prge-dual":
        lp = out[:q]
    lm = out[off: off + q]
    return [float(v) for v in lp], [float(v) for v in lm]


def run_local_round(fn: zo.LossFn, lora_b: torch.Tensor, batch_at: Batch, pool: SeedPool,
                    settings: RoundSettings, *, device_salt: int,
                    first_step: int = 0) -> LocalRound:
    """``settings.steps`` P-RGE steps from ``lora_b`` with pool directions, accumulated.

    Args:
        fn: the train program (``fn.slices`` >= 1 for mezo, q for prge, 2q for prge-dual).
        batch_at: the device's batch of step t (its own data).
        pool: the round's seed pool.
        device_salt: this device's salt: which pool seeds its steps draw.
        first_step: the device's step counter at the round's start (its data order goes on).
    """
    q, p = settings.q, lora_b.numel()
    acc = Accumulator(pool.size)
    b = lora_b.detach().clone().to(torch.float32)
    stack = torch.empty(fn.slices, p, dtype=torch.float32)
    zs = torch.empty(q, p, dtype=torch.float32)
    losses: list[float] = []
    for t in range(settings.steps):
        tokens, mask = batch_at(first_step + t)
        idx = pool.step_indices(device_salt, first_step + t, q)
        for i, k in enumerate(idx):
            pool.direction(k, p, out=zs[i])
        plus, minus = pool_estimate(fn, settings.mode, b, tokens, mask, zs, settings.eps,
                                    stack)
        raw = tuple((a - m) / (2.0 * settings.eps) for a, m in zip(plus, minus, strict=True))
        grads = zo.clip_grads(raw, settings.clip)
        for i, g in enumerate(grads):
            acc.add(idx[i], g)
            if g != 0.0:
                b.sub_(zs[i], alpha=float(settings.lr * g / q))
        losses.append((sum(plus) + sum(minus)) / (2 * q))
    per_step = 2 * q * fn.batch  # forward passes (sequences) of one step, in every mode
    mean = sum(losses) / len(losses) if losses else float("nan")
    return LocalRound(b, acc, mean, per_step * settings.steps)

"""Seed pool, accumulators and replay: every device rebuilds the same global adapter, and
replaying the aggregated scalars gives what the devices' ZO steps did (no runtime needed)."""

from __future__ import annotations

import torch

from agent.core import zo
from agent.federated.accumulate import Accumulator, SparseAccumulator, aggregate
from agent.federated.local import RoundSettings, run_local_round
from agent.federated.pool import SeedPool
from agent.federated.replay import CatchUpError, GlobalAdapter, RoundUpdate, replay

P = 96


def _quadratic(target: torch.Tensor, q: int) -> zo.AnalyticLoss:
    return zo.AnalyticLoss(lambda b: ((b - target) ** 2).sum(), slices=q, batch=1)


def _batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4)


def _device_round(salt: int, target: torch.Tensor, pool: SeedPool, b0: torch.Tensor,
                  settings: RoundSettings):
    return run_local_round(_quadratic(target, settings.q), b0, _batch, pool, settings,
                           device_salt=salt)


def test_pool_direction_is_the_pinned_generator_and_indices_are_distinct() -> None:
    pool = SeedPool(base=1234, size=64)
    assert torch.equal(pool.direction(5, P), zo.perturbation(1234, 5, P))
    assert torch.equal(pool.direction(5, P), SeedPool(1234, 64).direction(5, P))
    idx = pool.step_indices(7, 3, 8)
    assert len(set(idx)) == 8 and all(0 <= i < 64 for i in idx)
    assert idx == pool.step_indices(7, 3, 8)
    assert idx != pool.step_indices(8, 3, 8)  # another device draws other seeds


def test_replay_on_two_devices_gives_bit_identical_adapters() -> None:
    pool = SeedPool(base=99, size=32)
    acc = Accumulator(32)
    for k, g in [(3, 0.5), (17, -1.25), (3, 0.25), (31, 2.0)]:
        acc.add(k, g)
    upd = RoundUpdate(1, pool, acc.sparse(clip=None), lr=1e-2, q=2)
    b0 = torch.linspace(-1, 1, P)
    one, two = GlobalAdapter(b0.clone()), GlobalAdapter(b0.clone())
    one.apply(upd)
    two.apply(upd)
    assert one.round == two.round == 1
    assert torch.equal(one.lora_b, two.lora_b)
    assert not torch.equal(one.lora_b, b0)


def test_replaying_a_device_accumulator_gives_its_local_steps() -> None:
    pool = SeedPool(base=5, size=16)
    settings = RoundSettings(steps=12, q=2, lr=1e-2, eps=1e-3, clip=None)
    b0 = torch.zeros(P)
    local = _device_round(1, torch.ones(P), pool, b0, settings)
    assert local.accumulator.directions == 24
    rebuilt = replay(b0, RoundUpdate(1, pool, local.accumulator.sparse(None), 1e-2, 2))
    torch.testing.assert_close(rebuilt, local.lora_b, rtol=0, atol=1e-5)
    assert float(((local.lora_b - 1) ** 2).sum()) < float(((b0 - 1) ** 2).sum())


def test_federated_aggregate_equals_the_weighted_sum_of_the_devices_steps() -> None:
    pool = SeedPool(base=77, size=64)
    settings = RoundSettings(steps=6, q=2, lr=5e-3, eps=1e-3, clip=None)
    b0 = torch.zeros(P)
    targets = [torch.ones(P), -torch.ones(P), torch.linspace(0, 1, P)]
    counts = [10, 30, 20]
    rounds = [_device_round(s, t, pool, b0, settings) for s, t in enumerate(targets)]
    pairs = list(zip(rounds, counts, strict=True))
    agg = aggregate([(r.accumulator.sparse(None), n) for r, n in pairs], 64)
    fed = replay(b0, RoundUpdate(1, pool, SparseAccumulator.from_dense(agg), 5e-3, 2))
    central = b0 + sum((n / 60) * (r.lora_b - b0) for r, n in pairs)
    torch.testing.assert_close(fed, central, rtol=0, atol=1e-5)


def test_clip_bounds_each_slot_and_catch_up_needs_every_round() -> None:
    acc = Accumulator(8)
    acc.add(2, 50.0)
    acc.add(4, float("nan"))
    sparse = acc.sparse(clip=1.0)
    assert sparse.indices == (2,) and sparse.values == (1.0,)
    pool = SeedPool(1, 8)
    g = GlobalAdapter(torch.zeros(P))
    upd = [RoundUpdate(r, pool, sparse, 1e-2, 1) for r in (1, 2, 3)]
    try:
        g.apply(upd[2])
        raise AssertionError("round 3 before round 1 must be refused")
    except CatchUpError:
        pass
    g.catch_up(upd)
    assert g.round == 3
    before = g.lora_b.clone()
    assert not g.apply(upd[1]).any() and torch.equal(g.lora_b, before)  # old round: no-op

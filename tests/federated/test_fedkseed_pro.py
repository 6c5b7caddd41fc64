"""FedKSeed-Pro (Qin et al. 2024, §4.3): seed importance from the aggregated scalars, sent as
one byte per seed, and every device drawing its directions with the same probabilities."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from flwr.app import Message
from pydantic import ValidationError

from agent.federated.inprocess import act_as_server
from agent.federated.messages import RoundInstructions
from agent.federated.pool import GENERATOR, LEVELS, SeedPool, importance_levels
from agent.federated.replay import GlobalAdapter
from agent.federated.strategy import SeedStrategy
from agent.federated.wire import decode_instructions, encode_instructions
from tests.federated.fleet_support import P, analytic_device, run, settings


def _reference_levels(history: list[list[float]], clip: float) -> list[float]:
    """The paper's code, transcribed: mean |clamp(h)| over each seed's history (which starts
    with one 0.0), min-max normalized."""
    amps = [sum(abs(max(-clip, min(clip, v))) for v in h) / len(h) for h in history]
    lo, hi = min(amps), max(amps)
    return [(a - lo) / (hi - lo) for a in amps]


def test_importance_is_the_normalized_mean_amplitude_of_each_seeds_history() -> None:
    rounds = [((0, 2, 3), (1.0, -4.0, 0.5)), ((0, 3), (-3.0, 200.0)), ((), ())]
    levels = importance_levels(rounds, 5, clip=10.0)
    history = [[0.0, 1.0, -3.0], [0.0], [0.0, -4.0], [0.0, 0.5, 200.0], [0.0]]
    expected = _reference_levels(history, 10.0)
    assert levels == tuple(round(v * LEVELS) for v in expected)
    assert levels[3] == LEVELS and levels[1] == levels[4] == 0  # clipped 200 is the largest
    assert importance_levels([], 4, clip=1.0) == (0, 0, 0, 0)  # nothing known: uniform


def test_devices_draw_distinct_directions_more_often_from_important_seeds() -> None:
    levels = tuple([LEVELS] * 8 + [0] * 56)
    pool = SeedPool(123, 64, levels)
    p = pool.probabilities()
    assert float(p.sum()) == pytest.approx(1.0)
    assert float(p[0] / p[63]) == pytest.approx(math.e)  # at most e times as likely
    draws = [pool.step_indices(7, t, 2) for t in range(3000)]
    assert all(len(set(d)) == 2 for d in draws)
    assert draws == [pool.step_indices(7, t, 2) for t in range(3000)]  # deterministic
    counts = Counter(k for d in draws for k in d)
    top = sum(counts[k] for k in range(8)) / 8
    rest = sum(counts[k] for k in range(8, 64)) / 56
    assert 2.0 < top / rest < 3.2  # e, less a little for drawing without replacement
    assert SeedPool(123, 64).step_indices(7, 0, 2) != pool.step_indices(9, 0, 2)


def test_levels_travel_as_one_byte_per_seed_and_bad_ones_are_refused() -> None:
    levels = tuple(range(64))
    ins = RoundInstructions(round=2, bundle_id="b", generator=GENERATOR, pool_base=5,
                            pool_size=64, steps=1, q=2, lr=0.1, eps=0.01, clip=1.0,
                            seed_levels=levels)
    content = encode_instructions(ins)
    assert content.config_records["fed"]["seed_levels"] == bytes(levels)
    act_as_server(1)
    msg = Message(content, 1, "train")
    assert decode_instructions(msg).seed_levels == levels
    with pytest.raises(ValidationError, match="seed_levels"):
        RoundInstructions(**(ins.model_dump() | {"seed_levels": (1, 2)}))
    with pytest.raises(ValidationError, match="seed_levels"):
        RoundInstructions(**(ins.model_dump() | {"seed_levels": (300,) * 64}))
    with pytest.raises(ValueError, match="importance"):
        SeedPool(5, 64, (1,) * 63)


def test_a_fedkseed_pro_fleet_keeps_one_pool_sends_levels_and_replays_identically() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3, 4)}
    strategy = SeedStrategy(settings(fedkseed_pro=True))
    grid = run(devices, 3, strategy)
    assert len({u.pool.base for u in strategy.history}) == 1  # FedKSeed's fixed pool
    sent = [decode_instructions(m) for m in grid.received]
    assert all(s.seed_levels is None for s in sent if s.round == 1)
    later = [s.seed_levels for s in sent if s.round > 1]
    assert later and all(lv is not None and max(lv) == LEVELS for lv in later)
    assert [r.accepted for r in strategy.reports] == [4, 4, 4]
    server = GlobalAdapter(torch.zeros(P))
    server.catch_up(strategy.history)
    for d in devices.values():
        d.catch_up(strategy.history)
        assert torch.equal(d.glob.lora_b, server.lora_b)
    plain = SeedStrategy(settings())
    run({n: analytic_device(n) for n in (1, 2, 3, 4)}, 3, plain)
    assert len({u.pool.base for u in plain.history}) == 3  # off: a fresh pool per round

"""The ServerApp, the SeedStrategy and the ClientApp on Flower's message API, with analytic
devices: rounds complete, copies agree, dropouts and declines are tolerated, bad replies are
refused and counted."""

from __future__ import annotations

import math

import pytest
import torch

from agent.federated.client_app import DeviceLearner, RoundLearner
from agent.federated.messages import DeviceReply, RoundInstructions, SparseWire, refusal
from agent.federated.pool import GENERATOR
from agent.federated.replay import GlobalAdapter
from agent.federated.strategy import SeedStrategy
from tests.federated.fleet_support import BUNDLE, P, analytic_device, run, settings


def test_four_devices_share_a_global_adapter_bit_for_bit() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3, 4)}
    strategy = SeedStrategy(settings())
    run(devices, 3, strategy)
    assert [r.accepted for r in strategy.reports] == [4, 4, 4]
    assert [u.round for u in strategy.history] == [1, 2, 3]
    server = GlobalAdapter(torch.zeros(P))
    server.catch_up(strategy.history)
    for d in devices.values():
        assert d.glob.round == 2  # rounds 1, 2 replayed from the round 2 and 3 messages
        d.catch_up(strategy.history)
        assert torch.equal(d.glob.lora_b, server.lora_b)
    assert server.lora_b.abs().sum() > 0
    # the targets are 1..4 weighted by 10..40 examples: the global B moves towards 3
    assert float(server.lora_b.mean()) > 0
    for r in strategy.reports:  # seeds and scalars only: a few hundred bytes each way
        assert (r.bytes_up + r.bytes_down) / r.sent < 4096


def test_rounds_start_from_global_and_move_it_by_the_mean_of_the_round_updates() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3, 4)}
    strategy = SeedStrategy(settings())
    run(devices, 3, strategy)
    server = GlobalAdapter(torch.zeros(P))
    server.catch_up(strategy.history[:-1])
    before = server.lora_b.clone()
    server.apply(strategy.history[-1])
    # every device took round 3's steps from the global adapter after round 2 and keeps
    # only that round's update: global = previous global + the example-weighted mean of them
    total = sum(d.examples for d in devices.values())
    mean = sum((d.examples / total) * d.personal for d in devices.values())
    torch.testing.assert_close(server.lora_b, before + mean, rtol=0, atol=1e-5)
    for d in devices.values():  # what a device serves: global + its round's update
        d.catch_up(strategy.history)
        assert torch.equal(d.served, server.lora_b + d.personal)
        assert d.personal.abs().sum() > 0


def test_a_quarter_dropping_out_and_a_hot_device_still_complete_the_rounds() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3)}
    devices[4] = analytic_device(4, may_train=lambda: "hot: 82 C")
    strategy = SeedStrategy(settings())
    run(devices, 2, strategy, drop=lambda rnd, node: rnd == 1 and node == 2)
    first, second = strategy.reports
    assert (first.accepted, first.dropped, first.declined) == (2, 1, 1)
    assert (second.accepted, second.dropped, second.declined) == (3, 0, 1)
    for d in devices.values():
        d.catch_up(strategy.history)
    assert torch.equal(devices[2].glob.lora_b, devices[4].glob.lora_b)


class _Bad:
    """A device that answers every round with a crafted reply."""

    def __init__(self, honest: DeviceLearner, spoil: dict[str, object]) -> None:
        self.honest, self.spoil = honest, spoil

    def load_global(self, lora_b: torch.Tensor, at_round: int) -> None:
        self.honest.load_global(lora_b, at_round)

    def train_round(self, ins: RoundInstructions) -> DeviceReply:
        reply = self.honest.train_round(ins)
        doc = reply.model_dump()
        acc = self.spoil.pop("accumulator", None)
        doc.update(self.spoil)
        if acc is not None:
            doc["accumulator"] = acc
        return DeviceReply(**doc)


BAD: dict[str, dict[str, object]] = {
    "bundle": {"bundle_id": "another-bundle"},
    "pool": {"pool_base": 12345},
    "round": {"round": 7},
    "length": {"accumulator": SparseWire(size=32, indices=(1,), values=(0.5,))},
    "non-finite": {"accumulator": SparseWire(size=64, indices=(1, 2), values=(0.5, math.nan))},
    "out-of-range": {"accumulator": SparseWire(size=64, indices=(3,), values=(1e5,))},
    "generator": {"generator": "numpy-mt19937"},
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_reply_is_refused_counted_and_never_aggregated(kind: str) -> None:
    devices: dict[int, RoundLearner] = {n: analytic_device(n) for n in (1, 2, 3)}
    devices[4] = _Bad(analytic_device(4), dict(BAD[kind]))
    strategy = SeedStrategy(settings())
    run(devices, 1, strategy)
    report = strategy.reports[0]
    assert report.accepted == 3 and report.refused == {kind: 1}
    honest = SeedStrategy(settings())
    run({n: analytic_device(n) for n in (1, 2, 3)}, 1, honest)
    assert strategy.history[0].update == honest.history[0].update


def test_an_excluded_device_gets_no_round_and_a_replayed_reply_is_refused() -> None:
    strategy = SeedStrategy(settings(), excluded={3})
    devices = {n: analytic_device(n) for n in (1, 2, 3)}
    grid = run(devices, 1, strategy)
    assert {m.metadata.dst_node_id for m in grid.received} == {1, 2}
    assert devices[3].rounds_trained == [] and strategy.reports[0].accepted == 2
    ins = strategy.instructions(1)
    reply = DeviceReply(round=1, bundle_id=BUNDLE, generator=GENERATOR,
                        pool_base=ins.pool_base, examples=3,
                        accumulator=SparseWire(size=64, indices=(0,), values=(1.0,)))
    assert refusal(reply, ins, already=False) is None
    assert refusal(reply, ins, already=True) == "replayed"
    assert refusal(reply, ins, already=False, excluded=True) == "excluded"
    assert refusal(reply.model_copy(update={"examples": 0}), ins, already=False) == "no-examples"


def test_a_round_asking_too_much_is_declined() -> None:
    devices = {n: analytic_device(n) for n in (1, 2)}
    devices[2].max_steps = 2
    strategy = SeedStrategy(settings(steps=3))
    run(devices, 1, strategy)
    assert (strategy.reports[0].accepted, strategy.reports[0].declined) == (1, 1)
    assert devices[2].rounds_trained == []


def test_noise_hides_the_scalars_and_states_its_epsilon() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3, 4)}
    strategy = SeedStrategy(settings(noise=1.0, delta=1e-5))
    run(devices, 2, strategy)
    assert [r.accepted for r in strategy.reports] == [4, 4]  # noisy slots are within bounds
    # every drawn slot is sent (steps x q = 6 per device), zero or not
    assert strategy.reports[0].seeds_used == len(
        {k for d in devices.values() for t in range(3) for k in
         strategy.pool(1).step_indices(d.salt, t, 2)})
    one = strategy.epsilon(1)
    assert one == pytest.approx(0.5 + 2 * math.sqrt(0.5 * math.log(1e5)))
    assert strategy.epsilon() > one and SeedStrategy(settings()).epsilon(3) == math.inf


def test_a_server_that_lost_its_history_gets_declines_not_a_forked_adapter() -> None:
    devices = {n: analytic_device(n) for n in (1, 2)}
    first = SeedStrategy(settings())
    run(devices, 3, first)
    assert all(d.glob.round == 2 for d in devices.values())
    restarted = SeedStrategy(settings())  # starts again at round 1
    run(devices, 2, restarted)
    assert [r.declined for r in restarted.reports] == [2, 2]
    assert all(d.glob.round == 2 for d in devices.values())


def test_a_device_rejoining_rounds_later_gets_the_dense_adapter_once() -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3, 4)}
    strategy = SeedStrategy(settings(), initial=torch.zeros(P))
    grid = run(devices, 6, strategy, offline=lambda rnd, node: node == 4 and rnd <= 3)
    reports = strategy.reports
    assert [r.sent for r in reports] == [4] * 6 and [r.dropped for r in reports[:3]] == [1] * 3
    # round 4: it is back, behind by 3 rounds, and declines; round 5: it gets the dense B
    assert (reports[3].declined, reports[4].dense_sent, reports[4].accepted) == (1, 1, 4)
    assert reports[5].dense_sent == 0 and reports[5].accepted == 4
    assert devices[4].rounds_trained == [5, 6]
    assert strategy.server is not None
    for d in devices.values():
        d.catch_up(strategy.history)
        assert torch.equal(d.glob.lora_b, strategy.server.lora_b)
    dense = [m for m in grid.received if "global" in m.content.array_records]
    assert [m.metadata.dst_node_id for m in dense] == [4]

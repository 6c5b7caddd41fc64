"""A simulated fleet of four devices on the real ExecuTorch starter bundle, through Flower's
message API: every device ends with the same global adapter, one that lowers the held-out
loss of the task they share; a device that drops out of a round catches up by replay."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.bench.fleet_sim import fleet_data, learner, load_bundle, losses
from agent.federated.client_app import make_client_app
from agent.federated.inprocess import InProcessGrid, run_fleet
from agent.federated.replay import GlobalAdapter
from agent.federated.server_app import make_server_app
from agent.federated.strategy import FleetSettings, SeedStrategy
from agent.training.programs import load_program

pytestmark = pytest.mark.runtime


def test_four_devices_on_the_runtime_learn_one_shared_adapter(starter_bundle: Path) -> None:
    bundle = load_bundle(starter_bundle)
    train = load_program(starter_bundle, "executorch", 2, 2)
    data = fleet_data(bundle, 4, shared_per_device=4, private_size=4, heldout_size=4)
    devices = {d.node_id: learner(d, bundle, train) for d in data}
    strategy = SeedStrategy(FleetSettings(bundle_id=bundle.bundle_id, pool_size=256, steps=3,
                                          q=2, lr=2e-3, eps=1e-2, clip=100.0, seed=3))
    grid = InProcessGrid(make_client_app(lambda ctx: devices[ctx.node_id]), sorted(devices),
                         drop=lambda rnd, node: rnd == 2 and node == 4)
    run_fleet(make_server_app(strategy, 3), grid)
    assert [r.accepted for r in strategy.reports] == [4, 3, 4]
    assert strategy.reports[1].dropped == 1
    server = GlobalAdapter(torch.from_numpy(bundle.init_b.copy()))
    server.catch_up(strategy.history)
    for d in devices.values():
        d.catch_up(strategy.history)
        assert torch.equal(d.glob.lora_b, server.lora_b)
    assert devices[4].rounds_trained == [1, 2, 3]  # it trained round 2; its reply was lost
    for r in strategy.reports:
        assert (r.bytes_up + r.bytes_down) / r.sent < 18_000
    init = torch.from_numpy(bundle.init_b.copy())
    evaluate = load_program(starter_bundle, "executorch", 1, 2)
    before, after = losses(evaluate, data[0].shared_heldout, [init, server.lora_b],
                           bundle.pad_id)
    assert after < before

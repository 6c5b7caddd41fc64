"""The three learners of ``mobizo-bench fleet-learn``, on the same data and forward budget.

- **local**: each device runs P-RGE alone on its own data (rounds x steps steps);
- **federated**: the fleet on Flower (agent/federated): per round each device runs ``steps``
  P-RGE steps with pool directions and sends its per-seed scalars; every device replays the
  aggregate and serves global + personal;
- **centralized**: one device holding every device's data runs as many steps as one device
  of the fleet (the same forward passes per device);
- **dense FedAvg**: the usual baseline, whose bytes the report compares: each round every
  device starts from the global adapter, runs the round's P-RGE steps on its own data, and
  the server averages the devices' adapters weighted by their example counts;
- with ``--fedkseed-pro``, **federated (FedKSeed-Pro)** too: one pool for the run and each
  step's seeds drawn by their importance (agent/federated/pool.py).

Every learner starts from the bundle's initial adapter with the same ZO settings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from agent.bench.fleet_sim import Bundle, DeviceData, Split, learner, losses
from agent.core import zo
from agent.federated.client_app import make_client_app
from agent.federated.inprocess import InProcessGrid, run_fleet
from agent.federated.replay import GlobalAdapter
from agent.federated.server_app import make_server_app
from agent.federated.strategy import FleetSettings, SeedStrategy
from agent.training.data import BatchStream


@dataclass(frozen=True)
class Plan:
    """The benchmark's shape: fleet size, rounds, the round's ZO settings."""

    devices: int
    rounds: int
    steps: int
    q: int
    lr: float
    eps: float
    clip: float
    pool_size: int
    seed: int
    noise: float = 0.0
    delta: float = 1e-5
    shared_split: Split = "by-category"  # agent/bench/fleet_sim.py: how the shared task is split


@dataclass
class Fleet:
    """The bundle, each device's data and the two programs (train: S = q; eval)."""

    bundle: Bundle
    data: list[DeviceData]
    train: zo.LossFn
    evaluate: zo.LossFn

    def shared_loss(self, adapters: list[torch.Tensor]) -> list[float]:
        return losses(self.evaluate, self.data[0].shared_heldout, adapters, self.bundle.pad_id)

    def private_loss(self, adapters: list[torch.Tensor]) -> list[float]:
        return [losses(self.evaluate, d.private_heldout, [a], self.bundle.pad_id)[0]
                for d, a in zip(self.data, adapters, strict=True)]


def _init(fleet: Fleet) -> torch.Tensor:
    return torch.from_numpy(fleet.bundle.init_b.copy())


def _zo_run(fleet: Fleet, plan: Plan, stream: BatchStream, run_seed: int,
            on_round: Any) -> tuple[torch.Tensor, float]:
    """Ordinary P-RGE for rounds x steps steps; ``on_round(r, B)`` after each round."""
    b, buffers, seconds = _init(fleet), zo.StepBuffers(), 0.0
    for r in range(plan.rounds):
        t0 = time.perf_counter()
        for s in range(plan.steps):
            t = r * plan.steps + s
            tokens, mask = stream.batch_at(t)
            b = zo.zo_step(fleet.train, "prge", b, tokens, mask, run_seed=run_seed, step=t,
                           q=plan.q, eps=plan.eps, lr=plan.lr, clip=plan.clip,
                           buffers=buffers).lora_b
        seconds += time.perf_counter() - t0
        on_round(r + 1, b)
    return b, seconds


def run_local(fleet: Fleet, plan: Plan) -> dict[str, Any]:
    """Each device alone: its final adapter, the shared-loss curve (mean over devices)."""
    finals, seconds = [], 0.0
    curve: dict[int, list[torch.Tensor]] = {}
    for d in fleet.data:
        stream = BatchStream(d.train, fleet.train.batch, plan.seed + d.node_id)
        b, s = _zo_run(fleet, plan, stream, plan.seed + d.node_id,
                       lambda r, b: curve.setdefault(r, []).append(b))
        finals.append(b)
        seconds += s
    shared = [_mean(fleet.shared_loss(curve[r])) for r in sorted(curve)]
    return {"finals": finals, "shared_curve": shared,
            "seconds_per_round": seconds / plan.devices / plan.rounds}


def run_centralized(fleet: Fleet, plan: Plan) -> dict[str, Any]:
    """All devices' data on one device, as many steps as one device of the fleet."""
    union = tuple(ex for d in fleet.data for ex in d.train)
    stream = BatchStream(union, fleet.train.batch, plan.seed)
    curve: list[torch.Tensor] = []
    b, seconds = _zo_run(fleet, plan, stream, plan.seed, lambda r, b: curve.append(b))
    return {"final": b, "shared_curve": fleet.shared_loss(curve),
            "seconds_per_round": seconds / plan.rounds}


def run_fedavg(fleet: Fleet, plan: Plan) -> dict[str, Any]:
    """Dense FedAvg of adapters: the global adapter, its shared-loss curve, time per round."""
    glob, buffers, seconds = _init(fleet), zo.StepBuffers(), 0.0
    streams = [BatchStream(d.train, fleet.train.batch, plan.seed + d.node_id)
               for d in fleet.data]
    total = sum(len(d.train) for d in fleet.data)
    curve: list[torch.Tensor] = []
    for r in range(plan.rounds):
        t0 = time.perf_counter()
        new = torch.zeros_like(glob)
        for d, stream in zip(fleet.data, streams, strict=True):
            b = glob.clone()
            for s in range(plan.steps):
                t = r * plan.steps + s
                tokens, mask = stream.batch_at(t)
                b = zo.zo_step(fleet.train, "prge", b, tokens, mask,
                               run_seed=plan.seed + d.node_id, step=t, q=plan.q, eps=plan.eps,
                               lr=plan.lr, clip=plan.clip, buffers=buffers).lora_b
            new.add_(b, alpha=len(d.train) / total)
        glob = new
        seconds += time.perf_counter() - t0
        curve.append(glob.clone())
    return {"global": glob, "shared_curve": fleet.shared_loss(curve),
            "seconds_per_round": seconds / plan.rounds}


def run_federated(fleet: Fleet, plan: Plan, *, drop_share: float = 0.0,
                  pro: bool = False) -> dict[str, Any]:
    """The fleet on Flower; ``drop_share`` of the devices drop out of every round (rotating);
    ``pro``: FedKSeed-Pro's seed probabilities. Devices start every round from the global
    adapter and serve it plus their last round's update (DeviceLearner)."""
    devices = {d.node_id: learner(d, fleet.bundle, fleet.train, seed=plan.seed)
               for d in fleet.data}
    strategy = SeedStrategy(FleetSettings(
        bundle_id=fleet.bundle.bundle_id, pool_size=plan.pool_size, steps=plan.steps,
        q=plan.q, lr=plan.lr, eps=plan.eps, clip=plan.clip, seed=plan.seed, noise=plan.noise,
        delta=plan.delta, fedkseed_pro=pro))
    n_drop = math.ceil(plan.devices * drop_share)

    def drop(rnd: int, node: int) -> bool:  # a different quarter of the fleet each round
        return (node - 1 - rnd * n_drop) % plan.devices < n_drop

    grid = InProcessGrid(make_client_app(lambda ctx: devices[ctx.node_id]), sorted(devices),
                         drop=drop)
    run_fleet(make_server_app(strategy, plan.rounds), grid)
    server = GlobalAdapter(_init(fleet))
    curve = []
    for upd in strategy.history:  # the global adapter after each round, replayed
        server.apply(upd)
        curve.append(server.lora_b.clone())
    for dev in devices.values():
        dev.catch_up(strategy.history)
    identical = all(torch.equal(dev.glob.lora_b, server.lora_b) for dev in devices.values())
    return {"served": [devices[d.node_id].served for d in fleet.data],
            "global": server.lora_b, "global_shared_curve": fleet.shared_loss(curve),
            "reports": strategy.reports, "replicas_identical": identical}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)

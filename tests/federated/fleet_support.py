"""Small fleets for the Flower tests: devices whose loss is analytic (no runtime needed)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from agent.core import zo
from agent.federated.client_app import DeviceLearner, RoundLearner, make_client_app
from agent.federated.inprocess import Drop, InProcessGrid, run_fleet
from agent.federated.replay import GlobalAdapter
from agent.federated.server_app import make_server_app
from agent.federated.strategy import FleetSettings, SeedStrategy

P = 64
BUNDLE = "bundle-under-test"


def analytic_device(node: int, *, may_train: Callable[[], str | None] = lambda: None,
                    q: int = 2) -> DeviceLearner:
    target = torch.full((P,), float(node))
    fn = zo.AnalyticLoss(lambda b: ((b - target) ** 2).mean(), slices=q, batch=1)
    zeros = torch.zeros(P)
    return DeviceLearner(bundle_id=BUNDLE, program=fn,
                         batch_at=lambda t: (torch.zeros(1, 4, dtype=torch.long),
                                             torch.ones(1, 4)),
                         examples=10 * node, salt=node, glob=GlobalAdapter(zeros.clone()),
                         personal=zeros.clone(), may_train=may_train)


def settings(**kw: object) -> FleetSettings:
    base = dict(bundle_id=BUNDLE, pool_size=64, steps=3, q=2, lr=0.05, eps=1e-3, clip=50.0,
                seed=11)
    base.update(kw)
    return FleetSettings(**base)  # type: ignore[arg-type]


def run(devices: Mapping[int, RoundLearner], rounds: int, strategy: SeedStrategy,
        drop: Drop | None = None, offline: Drop | None = None) -> InProcessGrid:
    app = make_client_app(lambda ctx: devices[ctx.node_id])
    grid = InProcessGrid(app, sorted(devices), drop=drop or (lambda r, n: False),
                         offline=offline or (lambda r, n: False))
    run_fleet(make_server_app(strategy, rounds), grid)
    return grid

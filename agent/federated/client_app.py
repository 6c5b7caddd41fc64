"""The device side: a Flower ``ClientApp`` whose train handler runs one federated round.

Per round (issue 20 §2) the device:

1. checks the round is for its bundle and its direction generator (else declines);
2. replays the previous round's aggregate onto its copy of the global adapter (only that
   round's seeds: the copy is the cache), or declines with ``behind`` when it missed rounds;
   the strategy then sends it the dense global adapter with the next round (a device can
   also catch up from the rounds' history by replay, :meth:`DeviceLearner.catch_up`);
3. asks its policy whether it may train now (busy or hot: it declines, the strategy
   tolerates it);
4. runs the round's P-RGE steps with pool directions from its copy of the global adapter
   (FedKSeed's client: every device's gradients are taken at the point the aggregate is
   replayed onto), on its own data, and keeps what this round's steps did as its personal
   delta;
5. replies with its clipped per-seed accumulator and its example count; nothing else leaves.

What the device serves is ``global + personal``: the fleet's shared progress plus its own
last round's update (the daemon serves it only through the eval gate). The global adapter
after the round is the previous one plus the example-weighted mean of these updates.
Starting from ``global + every round's own steps`` instead let the personal delta grow
about twice the global's norm and took the gradients far from the point they are applied
at: on ``mobizo-bench fleet-learn`` the fleet then beat local-only by noise (0.006-0.038);
started from global it beats it by 0.19-0.31 and matches dense FedAvg.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from agent.core import zo
from agent.federated.local import Batch, RoundSettings, run_local_round
from agent.federated.messages import DeviceReply, RoundInstructions, SparseWire
from agent.federated.pool import GENERATOR, SeedPool
from agent.federated.replay import GlobalAdapter, RoundUpdate
from agent.federated.wire import (
    WireError,
    decode_dense,
    decode_instructions,
    encode_reply,
    to_sparse,
)

log = logging.getLogger(__name__)

MayTrain = Callable[[], str | None]  # None: go; else the reason to decline (busy, hot, ...)


def _always() -> str | None:
    return None


def generator_differs(ins: RoundInstructions, bundle_generator: str | None) -> str | None:
    """Why a round's directions cannot be drawn here, or None: the round names another
    generator than this device's, or than the one its bundle's manifest records
    (``zo_generator``; None, from an older bundle, is not checked)."""
    if ins.generator != GENERATOR:
        return f"generator differs: the round's {ins.generator}, this device's {GENERATOR}"
    if bundle_generator is not None and bundle_generator != ins.generator:
        return (f"generator differs: the round's {ins.generator}, the bundle's "
                f"{bundle_generator} (re-export it)")
    return None


@dataclass
class DeviceLearner:
    """One device's federated state: its program, data, global copy and personal delta.

    Attributes:
        bundle_id: the bundle this device runs.
        bundle_generator: the ZO generator its manifest records (None: not recorded).
        program: its train program (S >= q for prge).
        batch_at: its own data, batch of step t.
        examples: how many training examples it holds (its aggregation weight).
        salt: which pool seeds its steps draw (its node id).
        glob: its copy of the global adapter.
        personal: its last trained round's own update, served on top of the global adapter.
        may_train: its burst policy.
        max_steps: the most steps a round may ask (``[federated] max_steps_per_round``).
        max_pool: the largest pool it accepts (``[federated] max_pool_size``).
    """

    bundle_id: str
    program: zo.LossFn
    batch_at: Batch
    examples: int
    salt: int
    glob: GlobalAdapter
    personal: torch.Tensor
    mode: zo.Mode = "prge"
    may_train: MayTrain = _always
    max_steps: int = 64  # [federated] max_steps_per_round
    max_pool: int = 4096  # [federated] max_pool_size
    steps_done: int = 0
    bundle_generator: str | None = None
    rounds_trained: list[int] = field(default_factory=list)

    @property
    def served(self) -> torch.Tensor:
        """The adapter this device serves: global + its last round's own update."""
        return self.glob.lora_b + self.personal

    def _decline(self, ins: RoundInstructions, reason: str) -> DeviceReply:
        log.info("declining round %d: %s", ins.round, reason)
        return DeviceReply(round=ins.round, bundle_id=self.bundle_id, generator=GENERATOR,
                           pool_base=ins.pool_base, at_round=self.glob.round,
                           status="declined", reason=reason[:200])  # the wire's limit

    def train_round(self, ins: RoundInstructions) -> DeviceReply:
        """Steps 1-5 of the module docstring for one round's instructions."""
        if ins.bundle_id != self.bundle_id:
            return self._decline(ins, "bundle differs from this device's")
        differs = generator_differs(ins, self.bundle_generator)
        if differs:
            return self._decline(ins, differs)
        if ins.round <= self.glob.round:  # e.g. a server restarted without its history
            return self._decline(ins, f"stale round: this device replayed up to round "
                                      f"{self.glob.round}")
        if ins.previous is not None and ins.previous_pool_base is not None:
            # a run's K, lr and q are fixed (FleetSettings): the previous round's are these
            prev = RoundUpdate(ins.round - 1, SeedPool(ins.previous_pool_base, ins.pool_size),
                               to_sparse(ins.previous), ins.lr, ins.q)
            if prev.round > self.glob.round + 1:
                return self._decline(ins, f"behind: at round {self.glob.round}")
            self.glob.apply(prev)
        elif ins.round - 1 > self.glob.round:
            return self._decline(ins, f"behind: at round {self.glob.round}")
        if ins.steps > self.max_steps or ins.pool_size > self.max_pool:
            return self._decline(ins, f"asks {ins.steps} steps over {ins.pool_size} seeds; "
                                      f"this device allows {self.max_steps} over {self.max_pool}")
        reason = self.may_train()
        if reason:
            return self._decline(ins, reason)
        pool = SeedPool(ins.pool_base, ins.pool_size, ins.seed_levels)  # FedKSeed-Pro
        settings = RoundSettings(ins.steps, ins.q, ins.lr, ins.eps, ins.clip, self.mode)
        start = self.glob.lora_b  # FedKSeed's client: every round from the global adapter
        out = run_local_round(self.program, start, self.batch_at, pool, settings,
                              device_salt=self.salt, first_step=self.steps_done)
        self.personal = out.lora_b - start  # this round's own update
        self.steps_done += ins.steps
        self.rounds_trained.append(ins.round)
        sparse = out.accumulator.sparse(ins.clip, ins.noise)
        return DeviceReply(round=ins.round, bundle_id=self.bundle_id, generator=GENERATOR,
                           pool_base=ins.pool_base, at_round=self.glob.round,
                           examples=self.examples,
                           accumulator=SparseWire(size=sparse.size, indices=sparse.indices,
                                                  values=sparse.values))

    def load_global(self, lora_b: torch.Tensor, at_round: int) -> None:
        """Take the dense global adapter after ``at_round`` (a rejoin too far behind to
        replay); the personal delta stays on top."""
        if lora_b.numel() != self.glob.lora_b.numel():
            raise ValueError(f"a dense global adapter of {lora_b.numel()} values; this "
                             f"bundle's has {self.glob.lora_b.numel()}")
        if at_round > self.glob.round:
            self.glob = GlobalAdapter(lora_b.detach().clone().to(torch.float32), at_round)

    def catch_up(self, history: list[RoundUpdate]) -> None:
        """Replay the rounds this device has not replayed yet (a rejoin, or the last round)."""
        self.glob.catch_up(history)


class RoundLearner(Protocol):
    """Anything that answers a round's instructions (a :class:`DeviceLearner`, a test's
    misbehaving device)."""

    def train_round(self, ins: RoundInstructions) -> DeviceReply: ...

    def load_global(self, lora_b: torch.Tensor, at_round: int) -> None: ...


Learners = Callable[[Context], RoundLearner]


def make_client_app(learner_for: Learners) -> ClientApp:
    """The device's ``ClientApp``: ``train`` messages run :meth:`DeviceLearner.train_round`.

    Args:
        learner_for: the device's learner for a Flower context (on a board: the one learner
            of this SuperNode; in a simulated fleet: one per node id).
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            ins = decode_instructions(msg)
        except WireError as exc:
            return Message(Error(code=400, reason=str(exc)[:200]), reply_to=msg)
        learner = learner_for(context)
        dense = decode_dense(msg)
        if dense is not None:
            learner.load_global(*dense)
        reply = learner.train_round(ins)
        return Message(encode_reply(reply), reply_to=msg)

    return app

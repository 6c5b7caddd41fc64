"""The controller side's Flower ``Strategy``: seeds out, scalars in, weighted sum, replayable.

Each round the strategy draws the round's seed base, sends every sampled device the round's
instructions with the previous round's aggregate (so the device replays it), and aggregates
the replies: each is decoded, checked (:func:`agent.federated.messages.refusal`) and, if
good, weighted by its example count. A reply that fails is counted by reason and never
aggregated; a device that declined (busy, hot, behind) or dropped out mid-round is counted
and the round completes with the others. The aggregate is rounded to float32, as it goes on
the wire, before the server keeps it, so the server's history replays to the same bits as
every device's copy.

No arrays travel: Flower's ``ArrayRecord`` stays empty; the global adapter is the bundle's
initial adapter plus the replayed :attr:`SeedStrategy.history`.

Rounds are numbered by the history, not by Flower's per-run counter: the next round is
``len(history) + 1``. With a ``state_file`` the history is written after every round
(agent/federated/history.py) and read back at start, so a restarted ServerApp (a new
``flwr run``) goes on with round k + 1 and the devices, which replayed 1..k, take it.

FedKSeed-Pro (``FleetSettings.fedkseed_pro``): the pool is the same for the whole run and each
round carries every seed's importance from the aggregates so far (agent/federated/pool.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from agent.core.zo_directions import step_seed
from agent.federated.accumulate import SparseAccumulator, aggregate
from agent.federated.history import ServerHistory, load_history, save_history
from agent.federated.messages import RoundInstructions, SparseWire, refusal
from agent.federated.pool import GENERATOR, SeedPool, importance_levels
from agent.federated.privacy import epsilon
from agent.federated.replay import GlobalAdapter, RoundUpdate
from agent.federated.wire import (
    WireError,
    decode_reply,
    encode_instructions,
    to_sparse,
    wire_bytes,
    with_dense,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSettings:
    """A federated run's fixed settings (the same for every round)."""

    bundle_id: str
    pool_size: int = 1024
    steps: int = 4
    q: int = 2
    lr: float = 1e-4
    eps: float = 1e-2
    clip: float = 100.0
    seed: int = 0  # the seed bases of the rounds derive from it
    noise: float = 0.0  # Gaussian noise multiplier on the devices' scalars (privacy.py)
    delta: float = 1e-5  # the delta the reported epsilon is stated at
    fedkseed_pro: bool = False  # one pool for the run, seeds drawn by importance (pool.py)


@dataclass
class RoundReport:
    """What happened in one round, for the state document, the CLI and the benchmark."""

    round: int
    sent: int = 0
    accepted: int = 0
    declined: int = 0
    dropped: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    bytes_down: int = 0
    bytes_up: int = 0
    seeds_used: int = 0
    dense_sent: int = 0  # dense global adapters sent to devices too far behind
    seconds: float = 0.0


class SeedStrategy(Strategy):
    """FedKSeed-style aggregation of per-seed P-RGE accumulators (see module docstring)."""

    def __init__(self, settings: FleetSettings, *, excluded: Iterable[int] = (),
                 initial: torch.Tensor | None = None, state_file: Path | None = None,
                 min_nodes: int = 1, wait_nodes_s: float = 0.0) -> None:
        """Args:
            settings: the run's fixed settings.
            excluded: node ids never sent a round nor aggregated.
            initial: the bundle's initial flat B; with it the server replays every round
                too and sends the dense global adapter to a device that says it is behind.
            state_file: where the round history is kept across restarts (None: memory only).
            min_nodes: a round waits (up to ``wait_nodes_s``) for this many devices.
            wait_nodes_s: how long a round waits for ``min_nodes`` connected devices.

        Raises:
            HistoryError: ``state_file`` is unreadable or was written with other settings.
        """
        self.settings = settings
        self.excluded = set(excluded)
        self.server = None if initial is None else GlobalAdapter(initial.clone())
        self._behind: set[int] = set()  # nodes that declined as behind: dense next round
        self.history: list[RoundUpdate] = []
        self.reports: list[RoundReport] = []
        self._sent: dict[int, RoundInstructions] = {}
        self._t0 = 0.0
        self.state_file = state_file
        self.min_nodes, self.wait_nodes_s = min_nodes, wait_nodes_s
        if state_file is not None:
            stored = load_history(state_file, self.fingerprint())
            self.history = stored.rounds
            self.excluded |= stored.excluded
            self._behind = stored.behind
            if self.server is not None:
                self.server.catch_up(self.history)
            if self.history:
                log.info("resuming after round %d from %s", len(self.history), state_file)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a stored history must match: what the devices' replay depends on."""
        s = self.settings
        return {"bundle_id": s.bundle_id, "pool_size": s.pool_size, "lr": s.lr, "q": s.q,
                "seed": s.seed, "fedkseed_pro": s.fedkseed_pro}

    def _save(self) -> None:
        if self.state_file is not None:
            save_history(self.state_file, ServerHistory(self.fingerprint(), self.history,
                                                        self.excluded, self._behind))

    @property
    def next_round(self) -> int:
        """The number of the round the next ``configure_train`` sends."""
        return len(self.history) + 1

    def exclude(self, node_id: int) -> None:
        """Never aggregate this device's replies again (and stop sending it rounds)."""
        self.excluded.add(node_id)
        self._save()

    def pool(self, server_round: int) -> SeedPool:
        """Round ``server_round``'s seed pool: its base is a pure function of the run seed
        (FedKSeed-Pro: one pool for every round, so a seed's importance carries over)."""
        s = self.settings
        return SeedPool(step_seed(s.seed, 0 if s.fedkseed_pro else server_round), s.pool_size)

    def seed_levels(self) -> tuple[int, ...] | None:
        """FedKSeed-Pro's importance of each seed after the rounds so far (None: uniform)."""
        if not self.settings.fedkseed_pro:
            return None
        levels = importance_levels(((u.update.indices, u.update.values) for u in self.history),
                                   self.settings.pool_size, self.settings.clip)
        return levels if any(levels) else None

    def instructions(self, server_round: int) -> RoundInstructions:
        s = self.settings
        prev = self.history[-1] if self.history else None
        return RoundInstructions(
            round=server_round, bundle_id=s.bundle_id, generator=GENERATOR,
            pool_base=self.pool(server_round).base, pool_size=s.pool_size, steps=s.steps,
            q=s.q, lr=s.lr, eps=s.eps, clip=s.clip, noise=s.noise,
            previous=None if prev is None else SparseWire(
                size=prev.update.size, indices=prev.update.indices, values=prev.update.values),
            previous_pool_base=None if prev is None else prev.pool.base,
            seed_levels=self.seed_levels())

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        server_round = self.next_round  # Flower counts from 1 in every run; the history not
        report = RoundReport(server_round)
        self.reports.append(report)
        ins = self.instructions(server_round)
        content = encode_instructions(ins)
        nodes = self._nodes(grid)
        self._sent = {n: ins for n in nodes}
        report.sent = len(nodes)
        messages = []
        for n in nodes:
            body = content
            if n in self._behind and self.server is not None:
                body = with_dense(content, self.server.lora_b, self.server.round)
                report.dense_sent += 1
            report.bytes_down += wire_bytes(body)
            messages.append(Message(body, n, "train", group_id=str(server_round)))
        self._behind.clear()
        return messages

    def _nodes(self, grid: Grid) -> list[int]:
        """The connected, not excluded devices; waits up to ``wait_nodes_s`` for
        ``min_nodes`` of them (SuperNodes may still be connecting when a run starts)."""
        deadline = time.monotonic() + self.wait_nodes_s
        while True:
            nodes = sorted(n for n in grid.get_node_ids() if n not in self.excluded)
            if len(nodes) >= self.min_nodes or time.monotonic() >= deadline:
                return nodes
            time.sleep(0.2)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                             MetricRecord | None]:
        report = self.reports[-1]
        server_round = report.round
        good: list[tuple[int, SparseAccumulator, int]] = []
        seen: set[int] = set()
        answered: set[int] = set()
        for msg in sorted(replies, key=lambda m: m.metadata.src_node_id):
            node = msg.metadata.src_node_id
            answered.add(node)
            if msg.has_error():
                report.dropped += 1
                continue
            report.bytes_up += wire_bytes(msg.content)
            sent = self._sent.get(node)
            try:
                reply = decode_reply(msg)
            except WireError:
                report.refused["malformed"] += 1
                continue
            if sent is None:
                report.refused["not-sampled"] += 1
                continue
            if reply.status == "declined":
                report.declined += 1
                if reply.at_round < server_round - 1:
                    self._behind.add(node)
                continue
            why = refusal(reply, sent, already=node in seen, excluded=node in self.excluded)
            if why is not None:
                log.warning("round %d: refused the reply of node %d (%s)", server_round, node,
                            why)
                report.refused[why] += 1
                continue
            assert reply.accumulator is not None
            seen.add(node)
            good.append((node, to_sparse(reply.accumulator), reply.examples))
        report.dropped += len(set(self._sent) - answered)
        report.accepted = len(good)
        self.history.append(self._round_update(server_round, good))
        if self.server is not None:
            self.server.apply(self.history[-1])
        report.seeds_used = len(self.history[-1].update.indices)
        report.seconds = time.perf_counter() - self._t0
        self._save()
        metrics = MetricRecord({"accepted": report.accepted, "declined": report.declined,
                                "dropped": report.dropped,
                                "refused": sum(report.refused.values())})
        return None, metrics

    def _round_update(self, server_round: int,
                      good: list[tuple[int, SparseAccumulator, int]]) -> RoundUpdate:
        """The round's aggregate, float32-rounded as on the wire; empty if nobody trained."""
        size = self.settings.pool_size
        if good:
            sparse = SparseAccumulator.from_dense(
                aggregate([(acc, n) for _, acc, n in good], size))
        else:
            sparse = SparseAccumulator(size, (), ())
        values = tuple(float(np.float32(v)) for v in sparse.values)
        return RoundUpdate(server_round, self.pool(server_round),
                           SparseAccumulator(size, sparse.indices, values),
                           self.settings.lr, self.settings.q)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # each device gates its own adapter on its own held-out data

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def epsilon(self, rounds: int | None = None) -> float:
        """A device's client-level epsilon at ``settings.delta`` after ``rounds`` rounds
        (default: every round run so far); inf without noise."""
        done = len(self.history) if rounds is None else rounds
        return epsilon(self.settings.noise, done, self.settings.delta)

    def summary(self) -> None:
        s = self.settings
        log.info("SeedStrategy: K=%d seeds, %d steps x q=%d per round, lr %g, eps %g, clip %g, "
                 "noise %g (delta %g)", s.pool_size, s.steps, s.q, s.lr, s.eps, s.clip,
                 s.noise, s.delta)


"""The round's two messages, as strict pydantic models, and the server's checks of a reply.

Server -> device (:class:`RoundInstructions`): round, bundle id, generator, pool (seed base
+ K), steps, q, lr, eps, clip, the previous round's aggregated update to replay and, with
FedKSeed-Pro, each seed's importance level (agent/federated/pool.py).
Device -> server (:class:`DeviceReply`): the round and pool it answers, its bundle id, its
per-seed accumulator as sparse (index, value) pairs, and its example count; or a decline
(busy, hot, no data) with a reason. Only seeds, scalars and counts: no text, no adapter.

:func:`refusal` is the server's check of a reply against the round it sent; a reply that
fails it is counted and never aggregated (issue 20, "Bad input").
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.federated.pool import LEVELS, MAX_POOL
from agent.federated.privacy import bound


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparseWire(_Strict):
    """A sparse accumulator on the wire: ascending distinct indices and their values."""

    size: int = Field(ge=1, le=MAX_POOL, description="K, the accumulator's length")
    indices: tuple[int, ...] = Field(default=(), description="non-zero slots, ascending")
    values: tuple[float, ...] = Field(default=(), description="their values")

    @model_validator(mode="after")
    def _pairs(self) -> SparseWire:
        if len(self.indices) != len(self.values):
            raise ValueError(f"{len(self.indices)} indices but {len(self.values)} values")
        if any(b <= a for a, b in zip(self.indices, self.indices[1:], strict=False)):
            raise ValueError("indices must be strictly ascending")
        if self.indices and not (self.indices[0] >= 0 and self.indices[-1] < self.size):
            raise ValueError(f"an index lies outside 0..{self.size - 1}")
        return self


class RoundInstructions(_Strict):
    """What the server sends each sampled device at the start of a round."""

    round: int = Field(ge=1, description="the round number, from 1")
    bundle_id: str = Field(min_length=1, description="the model bundle every device must run")
    generator: str = Field(min_length=1, description="how a seed becomes z (pool.GENERATOR)")
    pool_base: int = Field(ge=0, lt=1 << 63, description="the round's seed base")
    pool_size: int = Field(ge=1, le=MAX_POOL, description="K, the seeds in the pool")
    steps: int = Field(ge=1, le=100_000, description="P-RGE steps per device this round")
    q: int = Field(ge=1, le=64, description="directions per step")
    lr: float = Field(gt=0, le=1.0, description="ZO-SGD learning rate")
    eps: float = Field(gt=0, le=1.0, description="perturbation scale")
    clip: float = Field(gt=0, le=1e6, description="bound on |g| and on each accumulator slot")
    noise: float = Field(default=0.0, ge=0, le=100,
                         description="Gaussian noise multiplier on the sent slots (privacy.py)")
    previous: SparseWire | None = Field(default=None, description="round-1's aggregate A")
    previous_pool_base: int | None = Field(default=None, ge=0, lt=1 << 63,
                                           description="round-1's seed base")
    seed_levels: tuple[int, ...] | None = Field(
        default=None, description="FedKSeed-Pro: each pool seed's importance, 0..255; the "
                                  "device draws its directions with softmax(level / 255)")

    @model_validator(mode="after")
    def _levels(self) -> RoundInstructions:
        lv = self.seed_levels
        if lv is not None and (len(lv) != self.pool_size or
                               any(not 0 <= v <= LEVELS for v in lv)):
            raise ValueError(f"seed_levels must hold {self.pool_size} values in 0..{LEVELS}")
        return self


class DeviceReply(_Strict):
    """A device's answer to a round: its accumulator and example count, or a decline."""

    round: int = Field(ge=1)
    bundle_id: str = Field(min_length=1)
    generator: str = Field(min_length=1)
    pool_base: int = Field(ge=0, lt=1 << 63)
    at_round: int = Field(default=0, ge=0, description="the last round the device replayed")
    status: Literal["trained", "declined"] = "trained"
    reason: str = Field(default="", max_length=200, description="why a device declined")
    examples: int = Field(default=0, ge=0, le=10_000_000, description="examples it trained on")
    accumulator: SparseWire | None = None


RefusalReason = Literal["bundle", "generator", "pool", "round", "replayed", "length",
                        "non-finite", "out-of-range", "no-examples", "excluded"]


def refusal(reply: DeviceReply, sent: RoundInstructions, *, already: bool,
            excluded: bool = False) -> RefusalReason | None:
    """Why the server must not aggregate ``reply`` to ``sent``; None if it may.

    Args:
        reply: the device's reply (already parsed: a malformed one never gets here).
        sent: the round the server sent this device.
        already: this device has a reply aggregated for this round already.
        excluded: the operator excluded this device.
    """
    if excluded:
        return "excluded"
    if reply.bundle_id != sent.bundle_id:
        return "bundle"
    if reply.generator != sent.generator:
        return "generator"
    if reply.round != sent.round:
        return "round"
    if already:
        return "replayed"
    if reply.pool_base != sent.pool_base:
        return "pool"
    acc = reply.accumulator
    if acc is None or acc.size != sent.pool_size:
        return "length"
    if any(not math.isfinite(v) for v in acc.values):
        return "non-finite"
    limit = bound(sent.clip, sent.noise, sent.steps * sent.q)
    if any(abs(v) > limit * (1 + 1e-6) for v in acc.values):  # float32 on the wire
        return "out-of-range"
    if reply.examples <= 0:
        return "no-examples"
    return None

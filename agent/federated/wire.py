"""The round messages as Flower records: one ``ConfigRecord`` named ``fed`` per message.

Scalars go as they are; a sparse accumulator goes as two packed byte strings, the indices as
little-endian uint16 (K <= 65536) and the values as little-endian float32: 6 bytes per
non-zero seed. Every decoded message is validated by its pydantic model
(agent/federated/messages.py), so a malformed one raises :class:`WireError` instead of
reaching the maths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from pydantic import ValidationError

from agent.federated.accumulate import SparseAccumulator
from agent.federated.messages import DeviceReply, RoundInstructions, SparseWire

RECORD = "fed"
DENSE = "global"  # the dense global adapter, only for a device too far behind to replay


class WireError(ValueError):
    """A message that does not decode to a valid round message."""


def pack(acc: SparseAccumulator) -> dict[str, Any]:
    """A sparse accumulator as the record's three entries."""
    return {"size": acc.size,
            "indices": np.asarray(acc.indices, dtype="<u2").tobytes(),
            "values": np.asarray(acc.values, dtype="<f4").tobytes()}


def unpack(size: Any, indices: Any, values: Any) -> SparseWire:
    """The validated sparse accumulator of the three entries.

    Raises:
        WireError: wrong types, lengths or values.
    """
    if not isinstance(indices, bytes) or not isinstance(values, bytes):
        raise WireError("accumulator indices and values must be bytes")
    if len(indices) % 2 or len(values) % 4:
        raise WireError("accumulator bytes are not whole uint16 / float32 values")
    idx = np.frombuffer(indices, dtype="<u2")
    val = np.frombuffer(values, dtype="<f4")
    try:
        return SparseWire(size=size, indices=tuple(int(i) for i in idx),
                          values=tuple(float(v) for v in val))
    except ValidationError as exc:
        raise WireError(f"bad accumulator: {exc.errors()[0]['msg']}") from None


def to_sparse(w: SparseWire) -> SparseAccumulator:
    return SparseAccumulator(w.size, w.indices, w.values)


def encode_instructions(ins: RoundInstructions) -> RecordDict:
    doc: dict[str, Any] = ins.model_dump(exclude={"previous", "previous_pool_base",
                                                  "seed_levels"})
    if ins.seed_levels is not None:  # FedKSeed-Pro: one byte per seed
        doc["seed_levels"] = bytes(ins.seed_levels)
    if ins.previous is not None and ins.previous_pool_base is not None:
        doc.update({f"prev.{k}": v for k, v in pack(to_sparse(ins.previous)).items()})
        doc["prev.pool_base"] = ins.previous_pool_base
    return RecordDict({RECORD: ConfigRecord(doc)})


def decode_instructions(msg: Message) -> RoundInstructions:
    """The round a server message carries. Raises :class:`WireError`."""
    doc = _record(msg)
    prev = None
    if "prev.size" in doc:
        prev = unpack(doc.pop("prev.size"), doc.pop("prev.indices", None),
                      doc.pop("prev.values", None))
    prev_base = doc.pop("prev.pool_base", None)
    levels = doc.pop("seed_levels", None)
    if levels is not None and not isinstance(levels, bytes):
        raise WireError("seed_levels must be bytes, one per pool seed")
    doc["seed_levels"] = None if levels is None else tuple(levels)
    try:
        return RoundInstructions(**doc, previous=prev, previous_pool_base=prev_base)
    except (ValidationError, TypeError) as exc:
        raise WireError(f"bad round instructions: {exc}") from None


def encode_reply(reply: DeviceReply) -> RecordDict:
    doc: dict[str, Any] = reply.model_dump(exclude={"accumulator"})
    if reply.accumulator is not None:
        doc.update({f"acc.{k}": v for k, v in pack(to_sparse(reply.accumulator)).items()})
    return RecordDict({RECORD: ConfigRecord(doc)})


def decode_reply(msg: Message) -> DeviceReply:
    """A device's reply. Raises :class:`WireError` (counted as malformed by the server)."""
    doc = _record(msg)
    acc = None
    if "acc.size" in doc:
        acc = unpack(doc.pop("acc.size"), doc.pop("acc.indices", None),
                     doc.pop("acc.values", None))
    try:
        return DeviceReply(**doc, accumulator=acc)
    except (ValidationError, TypeError) as exc:
        raise WireError(f"bad device reply: {exc}") from None


def with_dense(content: RecordDict, lora_b: torch.Tensor, at_round: int) -> RecordDict:
    """``content`` plus the dense global adapter after round ``at_round``."""
    out = RecordDict({RECORD: content.config_records[RECORD]})
    out[DENSE] = ArrayRecord(torch_state_dict={"lora_b": lora_b.detach().clone()})
    out[DENSE + ".round"] = ConfigRecord({"round": at_round})
    return out


def decode_dense(msg: Message) -> tuple[torch.Tensor, int] | None:
    """The dense global adapter and its round, if the message carries one."""
    if msg.has_error() or DENSE not in msg.content.array_records:
        return None
    arrays = msg.content.array_records[DENSE].to_torch_state_dict()
    at = msg.content.config_records[DENSE + ".round"]["round"]
    if "lora_b" not in arrays or not isinstance(at, int):
        raise WireError("a dense global adapter without its tensor or round")
    return arrays["lora_b"].to(torch.float32).reshape(-1), at


def _record(msg: Message) -> dict[str, Any]:
    if msg.has_error() or RECORD not in msg.content.config_records:
        raise WireError(f"no {RECORD!r} config record in the message")
    return dict(msg.content.config_records[RECORD])


def wire_bytes(content: RecordDict) -> int:
    """Bytes Flower ships for ``content``: every object of its tree, deflated."""
    total = len(content.deflate())
    stack = list((content.children or {}).values())
    while stack:
        obj = stack.pop()
        total += len(obj.deflate())
        stack.extend((obj.children or {}).values())
    return total

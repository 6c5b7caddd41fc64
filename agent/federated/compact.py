"""Round instructions compact enough for the daemon's control socket (one 64 KB line).

The SuperNode relays each round's :class:`~agent.federated.messages.RoundInstructions` to the
daemon as JSON (``federated-round``). As plain JSON the previous round's aggregate costs
about 30 bytes per non-zero seed and FedKSeed-Pro's importance levels 4 bytes per seed, so a
K = 4096 pool with a busy aggregate passes the line's 64 KB. Here both travel as they do on
Flower's wire (agent/federated/wire.py: uint16 indices, float32 values, one byte per level),
base64-encoded: 8 bytes per non-zero seed and 1.4 per level, about 40 KB at worst for
K = 4096. The aggregate is float32 on Flower's wire already, so nothing is lost.

:func:`compact` runs in the SuperNode, :func:`expand` in the round child before validation.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from agent.federated.messages import RoundInstructions

PACKED = "packed"  # marks a compacted document (a plain one is accepted as well)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def compact(ins: RoundInstructions) -> dict[str, Any]:
    """``ins`` as a JSON object with the aggregate and the levels packed."""
    doc: dict[str, Any] = ins.model_dump(mode="json", exclude={"previous", "seed_levels"})
    packed: dict[str, Any] = {}
    if ins.previous is not None:
        packed["previous"] = {
            "size": ins.previous.size,
            "indices": _b64(np.asarray(ins.previous.indices, dtype="<u2").tobytes()),
            "values": _b64(np.asarray(ins.previous.values, dtype="<f4").tobytes())}
    if ins.seed_levels is not None:
        packed["seed_levels"] = _b64(bytes(ins.seed_levels))
    doc[PACKED] = packed
    return doc


def expand(doc: dict[str, Any]) -> dict[str, Any]:
    """The plain document :class:`RoundInstructions` validates.

    Raises:
        ValueError: a packed part that does not decode.
    """
    if PACKED not in doc:
        return doc
    out = {k: v for k, v in doc.items() if k != PACKED}
    packed = doc[PACKED]
    if not isinstance(packed, dict):
        raise ValueError(f"{PACKED!r} must be an object")
    try:
        prev = packed.get("previous")
        if prev is not None:
            idx = np.frombuffer(base64.b64decode(prev["indices"], validate=True), dtype="<u2")
            val = np.frombuffer(base64.b64decode(prev["values"], validate=True), dtype="<f4")
            out["previous"] = {"size": prev["size"], "indices": [int(i) for i in idx],
                               "values": [float(v) for v in val]}
        levels = packed.get("seed_levels")
        if levels is not None:
            out["seed_levels"] = list(base64.b64decode(levels, validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"packed round instructions do not decode: {exc}") from None
    return out

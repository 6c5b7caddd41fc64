"""The server's round history on disk, so a restarted ServerApp goes on where it stopped.

Every device's global adapter is the bundle's initial adapter plus the replayed rounds
(agent/federated/replay.py). A server that forgot its rounds would start again at round 1
and every device that replayed rounds 1..k would decline it as stale; one that invented
other rounds would fork the adapter. So after each round the strategy writes, atomically
(agent/io/atomic.py: temp file, fsync, rename, fsync the directory), everything a device
replays and everything the server decides with:

- the run's fixed settings that replay depends on (bundle id, K, lr, q, run seed, whether
  the pool is FedKSeed-Pro's fixed pool): a restart with other values is refused, since the
  devices rebuild the previous round with the current lr and q;
- every round's update: round, pool base and size, the aggregated sparse A (float32 values
  as they went on the wire, stored as exact JSON floats), lr and q;
- the excluded devices and the devices owed the dense adapter (declined as ``behind``).

The next round is the one after the last stored; a reply to an older round is refused as
``round`` (the replay guard), since only the current round is ever sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import MobizoError
from agent.federated.accumulate import SparseAccumulator
from agent.federated.pool import SeedPool
from agent.federated.replay import RoundUpdate
from agent.io.atomic import atomic_write_json

FORMAT = 1  # bump when the document changes shape


class HistoryError(MobizoError):
    """The state file cannot be read, or belongs to another run."""


@dataclass
class ServerHistory:
    """What a restarted server needs: the fingerprint, the rounds, excluded and behind."""

    fingerprint: dict[str, Any]
    rounds: list[RoundUpdate] = field(default_factory=list)
    excluded: set[int] = field(default_factory=set)
    behind: set[int] = field(default_factory=set)


def _round_doc(upd: RoundUpdate) -> dict[str, Any]:
    return {"round": upd.round, "pool_base": upd.pool.base, "pool_size": upd.pool.size,
            "indices": list(upd.update.indices), "values": list(upd.update.values),
            "lr": upd.lr, "q": upd.q}


def _round_of(doc: dict[str, Any]) -> RoundUpdate:
    size = int(doc["pool_size"])
    indices = tuple(int(i) for i in doc["indices"])
    values = tuple(float(v) for v in doc["values"])
    if len(indices) != len(values) or any(not 0 <= i < size for i in indices):
        raise ValueError(f"round {doc.get('round')}: indices and values do not match")
    return RoundUpdate(int(doc["round"]), SeedPool(int(doc["pool_base"]), size),
                       SparseAccumulator(size, indices, values), float(doc["lr"]),
                       int(doc["q"]))


def save_history(path: Path, history: ServerHistory) -> None:
    """Write ``history`` to ``path`` atomically and durably."""
    atomic_write_json(path, {
        "format": FORMAT, "fingerprint": history.fingerprint,
        "rounds": [_round_doc(u) for u in history.rounds],
        "excluded": sorted(history.excluded), "behind": sorted(history.behind)})


def load_history(path: Path, fingerprint: dict[str, Any]) -> ServerHistory:
    """The history in ``path`` (an empty one if the file does not exist yet).

    Raises:
        HistoryError: the file is unreadable, malformed, has gaps in its rounds, or was
            written by a run with other settings (``fingerprint`` differs).
    """
    if not path.exists():
        return ServerHistory(dict(fingerprint))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, this server reads {FORMAT}")
        rounds = [_round_of(r) for r in doc["rounds"]]
        excluded = {int(n) for n in doc.get("excluded", [])}
        behind = {int(n) for n in doc.get("behind", [])}
        stored = dict(doc["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HistoryError(f"cannot read the round history {path}: {exc}; move it away to "
                           "start a new run (devices then decline its rounds as stale)") from None
    if [u.round for u in rounds] != list(range(1, len(rounds) + 1)):
        raise HistoryError(f"the round history {path} has gaps: rounds "
                           f"{[u.round for u in rounds]}")
    differs = _differences(stored, fingerprint)
    if differs:
        raise HistoryError(f"the round history {path} belongs to another run ({differs}); "
                           "run with its settings, or give another state-file")
    return ServerHistory(stored, rounds, excluded, behind)


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> str:
    keys: Iterable[str] = sorted(set(stored) | set(now))
    return ", ".join(f"{k}: stored {stored.get(k)!r}, now {now.get(k)!r}" for k in keys
                     if stored.get(k) != now.get(k))

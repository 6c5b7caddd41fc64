"""A device's federated state on disk: its global copy, its personal delta, its round.

The round child (agent/federated/device_round.py) loads and saves it around each round; the
daemon (agent/services/daemon/federated_global.py) replaces the global copy when a dense
catch-up arrives. Both go through here, so the format is written in one place:

* ``global.npy``: the global flat LoRA-B after ``round`` (float32 [P]);
* ``personal.npy``: this device's last trained round's own update, served on top of it
  (float32 [P]; each round starts from the global copy and replaces it);
* ``state.json``: ``{"bundle_id", "round", "steps_done", "global_sha256"}``, written LAST:
  it names the round the global copy holds and that copy's hash. A power cut between the
  writes leaves an older document over a newer ``global.npy``; the hash tells, and the
  global copy is then taken as unknown (the bundle's initial adapter at round 0: the device
  declines ``behind`` and is sent the dense global adapter) rather than replayed onto.

NumPy only (the daemon never imports torch).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.core.federated_job import GLOBAL_FILE, PERSONAL_FILE, STATE_FILE
from agent.io.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class FederatedState:
    """What a device keeps between rounds.

    Attributes:
        bundle_id: the bundle the arrays belong to.
        glob: the global flat B after ``round`` (float32 [P]).
        personal: the device's last trained round's update, served on top of it (float32 [P]).
        round: the last round replayed into ``glob`` (0: the bundle's initial adapter).
        steps_done: the device's step counter (its data order goes on across rounds).
    """

    bundle_id: str
    glob: np.ndarray
    personal: np.ndarray
    round: int = 0
    steps_done: int = 0


def fresh_state(bundle_id: str, init_b: np.ndarray) -> FederatedState:
    """The state before any round: the bundle's initial adapter, no personal delta."""
    init = np.asarray(init_b, dtype=np.float32).reshape(-1)
    return FederatedState(bundle_id, init.copy(), np.zeros(init.size, dtype=np.float32))


def read_state_document(state_dir: Path) -> dict[str, object] | None:
    """``state.json`` as saved, or None when there is none (or it does not parse)."""
    try:
        doc = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def load_state(state_dir: Path, bundle_id: str, init_b: np.ndarray) -> FederatedState:
    """The saved state for ``bundle_id``; a fresh one (the bundle's initial adapter, round 0)
    when there is none, it belongs to another bundle or its arrays do not fit."""
    fresh = fresh_state(bundle_id, init_b)
    meta = read_state_document(state_dir)
    if meta is None:
        return fresh
    if meta.get("bundle_id") != bundle_id:
        log.info("federated state belongs to bundle %s: starting afresh", meta.get("bundle_id"))
        return fresh
    try:
        glob_bytes = (state_dir / GLOBAL_FILE).read_bytes()
        glob = np.load(io.BytesIO(glob_bytes), allow_pickle=False)
        personal = np.load(state_dir / PERSONAL_FILE, allow_pickle=False)
    except (OSError, ValueError):
        log.warning("federated state in %s has unreadable arrays: starting afresh", state_dir)
        return fresh
    if glob.size != fresh.glob.size or personal.size != fresh.glob.size:
        log.warning("federated state has %d values, the bundle %d: starting afresh",
                    glob.size, fresh.glob.size)
        return fresh
    personal = personal.astype(np.float32).reshape(-1)
    steps = int(str(meta.get("steps_done", 0)))
    want = meta.get("global_sha256")
    if want is not None and want != hashlib.sha256(glob_bytes).hexdigest():
        log.warning("federated state: %s is not the global copy %s names (cut off between "
                    "writes): taken as unknown, the device catches up", GLOBAL_FILE, STATE_FILE)
        return FederatedState(bundle_id, fresh.glob, personal, 0, steps)
    return FederatedState(bundle_id, glob.astype(np.float32).reshape(-1), personal,
                          int(str(meta.get("round", 0))), steps)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def save_state(state_dir: Path, state: FederatedState) -> None:
    """Write the arrays first and the state document last (see the module docstring)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    glob = _npy(state.glob)
    atomic_write_bytes(state_dir / GLOBAL_FILE, glob)
    atomic_write_bytes(state_dir / PERSONAL_FILE, _npy(state.personal))
    atomic_write_text(state_dir / STATE_FILE, json.dumps(
        {"bundle_id": state.bundle_id, "round": state.round, "steps_done": state.steps_done,
         "global_sha256": hashlib.sha256(glob).hexdigest()}) + "\n")

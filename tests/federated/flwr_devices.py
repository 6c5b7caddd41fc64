"""A device ClientApp for the real-runtime tests: an analytic-loss learner kept in a file.

``flower-supernode`` runs every message in a fresh ``flwr-clientapp`` process, so a device's
state cannot live in memory between rounds (on a board it lives in the daemon:
agent/federated/supernode_app.py). Here it lives in ``node_config['state-dir']``: the
:class:`~agent.federated.client_app.DeviceLearner` of tests/federated/fleet_support.py
(target ``node_config['target']``) is rebuilt from ``device.pt`` before each round and
written back, atomically, after it, with the node id it ran as, so a test can rebuild the
same fleet in process and compare bit for bit.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context

from agent.federated.client_app import DeviceLearner, make_client_app
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.replay import GlobalAdapter
from agent.io.atomic import atomic_write_bytes
from tests.federated.fleet_support import P, analytic_device

STATE = "device.pt"


def device(node_id: int, target: float) -> DeviceLearner:
    """The analytic device of ``target`` at round 0, salted by its node id."""
    d = analytic_device(int(target))
    d.salt = node_id
    return d


def read_state(state_dir: Path) -> dict[str, Any]:
    """The stored device: node id, target, global round and B, personal delta, steps."""
    return torch.load(state_dir / STATE, weights_only=True)


class FileDevice:
    """A :class:`~agent.federated.client_app.RoundLearner` whose learner lives in a file."""

    def __init__(self, state_dir: Path, node_id: int, target: float) -> None:
        self.path = state_dir / STATE
        self.node_id, self.target = node_id, target
        self.learner = device(node_id, target)
        if self.path.exists():
            doc = read_state(state_dir)
            self.learner.glob = GlobalAdapter(doc["glob"], int(doc["round"]))
            self.learner.personal = doc["personal"]
            self.learner.steps_done = int(doc["steps"])
            self.learner.rounds_trained = list(doc["trained"])

    def _save(self) -> None:
        buf = io.BytesIO()
        torch.save({"node_id": self.node_id, "target": self.target,
                    "glob": self.learner.glob.lora_b, "round": self.learner.glob.round,
                    "personal": self.learner.personal, "steps": self.learner.steps_done,
                    "trained": self.learner.rounds_trained}, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def train_round(self, ins: RoundInstructions) -> DeviceReply:
        reply = self.learner.train_round(ins)
        self._save()
        return reply

    def load_global(self, lora_b: torch.Tensor, at_round: int) -> None:
        self.learner.load_global(lora_b, at_round)
        self._save()


def learner_for(context: Context) -> FileDevice:
    cfg = context.node_config
    state = Path(str(cfg["state-dir"]))
    state.mkdir(parents=True, exist_ok=True)
    return FileDevice(state, int(context.node_id), float(cfg.get("target", 1.0)))


app = make_client_app(learner_for)

__all__ = ["P", "app", "device", "read_state"]

"""The ClientApp a board's Flower SuperNode runs: rounds go to the agent daemon.

``flower-supernode`` (systemd/mobizo-supernode.service) loads ``agent.federated.
supernode_app:app`` from the fleet's Flower App (its ``[tool.flwr.app.components]
clientapp``). This app does not train in the SuperNode's process: per round it sends the
server's instructions to the running daemon over its control socket (``federated-round``,
agent/services/daemon/federated_round.py) and polls until the daemon answers. The daemon
applies its policy (busy, hot, on battery: declined with the reason), runs the round's P-RGE
steps in its lowered round child on its real store and ExecuTorch program, and returns the
clipped per-seed accumulator and example count; that reply goes back to the server as is.

Node config (``flower-supernode --node-config``):
``control-socket`` (default ``/var/lib/mobizo-agent/control.sock``) and
``round-timeout-s`` (default 1800: how long a round may run before the app gives up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context

from agent.errors import MobizoError
from agent.federated.client_app import make_client_app
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.pool import GENERATOR
from agent.io.control_socket import control_request

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/mobizo-agent/control.sock")
POLL_S = 1.0


@dataclass
class DaemonLearner:
    """A :class:`~agent.federated.client_app.RoundLearner` that asks the daemon to train.

    Attributes:
        socket: the daemon's control socket.
        salt: which pool seeds this device draws (its Flower node id).
        timeout_s: how long a round may run before it is declined here.
        poll_s: seconds between polls of a running round.
    """

    socket: Path
    salt: int
    timeout_s: float = 1800.0
    poll_s: float = POLL_S

    def _declined(self, ins: RoundInstructions, reason: str) -> DeviceReply:
        return DeviceReply(round=ins.round, bundle_id=ins.bundle_id, generator=GENERATOR,
                           pool_base=ins.pool_base, status="declined", reason=reason[:200])

    def _ask(self, ins: RoundInstructions) -> dict[str, Any]:
        args = {"round": ins.round, "salt": self.salt,
                "instructions": ins.model_dump(mode="json")}
        reply = control_request(self.socket, "federated-round", args)
        if not reply.ok:
            raise MobizoError(f"the daemon refused the round: {reply.error}")
        return reply.result or {}

    def train_round(self, ins: RoundInstructions) -> DeviceReply:
        """Ask the daemon for the round; wait while it runs; its reply or a decline."""
        deadline = time.monotonic() + self.timeout_s
        try:
            answer = self._ask(ins)
            while answer.get("status") == "running":
                if time.monotonic() > deadline:
                    return self._declined(ins, f"the round ran over {self.timeout_s:.0f} s")
                time.sleep(self.poll_s)
                answer = self._ask(ins)
        except MobizoError as exc:
            return self._declined(ins, str(exc))
        if answer.get("status") == "trained" and isinstance(answer.get("reply"), dict):
            return DeviceReply.model_validate(answer["reply"])
        if isinstance(answer.get("reply"), dict):  # the child's own decline (bundle, behind)
            return DeviceReply.model_validate(answer["reply"])
        return self._declined(ins, str(answer.get("reason") or "declined by the daemon"))

    def load_global(self, lora_b: torch.Tensor, at_round: int) -> None:
        """A dense catch-up is not forwarded to the daemon yet: the device keeps declining
        with ``behind`` until it can replay (see the report of issue 20's wiring)."""
        log.warning("a dense global adapter after round %d was offered; this device "
                    "catches up by replay only", at_round)


def learner_for(context: Context) -> DaemonLearner:
    """The board's learner for a Flower context (its node id and node config)."""
    cfg = context.node_config
    socket = Path(str(cfg.get("control-socket", DEFAULT_SOCKET)))
    timeout = float(cfg.get("round-timeout-s", 1800.0))
    return DaemonLearner(socket, int(context.node_id) & ((1 << 63) - 1), timeout)


app = make_client_app(learner_for)

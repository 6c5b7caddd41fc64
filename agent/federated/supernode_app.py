"""The ClientApp a board's Flower SuperNode runs: rounds go to the agent daemon.

``flower-supernode`` (systemd/mobizo-supernode.service) loads ``agent.federated.
supernode_app:app`` from the fleet's Flower App (its ``[tool.flwr.app.components]
clientapp``). This app does not train in the SuperNode's process: per round it sends the
server's instructions to the running daemon over its control socket (``federated-round``,
agent/services/daemon/federated_round.py) and polls until the daemon answers. The daemon
applies its policy (busy, hot, on battery: declined with the reason), runs the round's P-RGE
steps in its lowered round child on its real store and ExecuTorch program, and returns the
clipped per-seed accumulator and example count; that reply goes back to the server as is.

A device too far behind to replay is sent the dense global adapter once: it is over the
control socket's 64 KB line, so the app writes it into the daemon's handoff directory
(``<state_dir>/federated/incoming``, 0700, agent/io/dense_handoff.py) and sends
``federated-global`` with the file's name, SHA-256 and round; the daemon verifies it and
installs it as the device's global copy before the round runs. A refused one declines the
round with the daemon's reason (the server sends it again with the next round).

Node config (``flower-supernode --node-config``):
``control-socket`` (default ``/var/lib/mobizo-agent/control.sock``),
``handoff-dir`` (default ``federated/incoming`` beside the socket) and
``round-timeout-s`` (default 1800: how long a round may run before the app gives up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context

from agent.errors import MobizoError
from agent.federated.client_app import make_client_app
from agent.federated.compact import compact
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.pool import GENERATOR
from agent.io.control_socket import control_request
from agent.io.dense_handoff import handoff_dir, write_dense

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
        handoff: where dense global adapters go for the daemon (default: beside the socket).
    """

    socket: Path
    salt: int
    timeout_s: float = 1800.0
    poll_s: float = POLL_S
    handoff: Path | None = None
    _dense: tuple[torch.Tensor, int] | None = field(default=None, repr=False)

    def _declined(self, ins: RoundInstructions, reason: str) -> DeviceReply:
        return DeviceReply(round=ins.round, bundle_id=ins.bundle_id, generator=GENERATOR,
                           pool_base=ins.pool_base, status="declined", reason=reason[:200])

    def _ask(self, ins: RoundInstructions) -> dict[str, Any]:
        # packed: a busy aggregate and FedKSeed-Pro levels fit the socket's 64 KB line
        args = {"round": ins.round, "salt": self.salt, "instructions": compact(ins)}
        reply = control_request(self.socket, "federated-round", args)
        if not reply.ok:
            raise MobizoError(f"the daemon refused the round: {reply.error}")
        return reply.result or {}

    def train_round(self, ins: RoundInstructions) -> DeviceReply:
        """Hand over a pending dense adapter; ask the daemon for the round; wait while it
        runs; its reply or a decline."""
        deadline = time.monotonic() + self.timeout_s
        try:
            self._hand_over(ins)
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
        """Keep the dense global adapter after ``at_round``: :meth:`train_round` hands it to
        the daemon (it needs the round's bundle id) before asking for the round."""
        self._dense = (lora_b.detach().to(torch.float32).reshape(-1), at_round)

    def _hand_over(self, ins: RoundInstructions) -> None:
        """Write the pending dense adapter for the daemon and have it installed.

        Raises:
            MobizoError: the daemon refused it (its reason) or the file could not be written.
        """
        if self._dense is None:
            return
        lora_b, at_round = self._dense
        self._dense = None  # one try: a refused adapter comes again with the next round
        directory = self.handoff or handoff_dir(self.socket.parent)
        try:
            path, digest = write_dense(directory, lora_b.numpy(), bundle_id=ins.bundle_id,
                                       at_round=at_round)
        except OSError as exc:
            raise MobizoError(f"cannot write the dense global adapter to {directory}: "
                              f"{exc}") from None
        args = {"path": str(path), "sha256": digest, "round": at_round,
                "bundle_id": ins.bundle_id}
        reply = control_request(self.socket, "federated-global", args)
        if not reply.ok:
            path.unlink(missing_ok=True)
            raise MobizoError(f"the daemon refused the dense global adapter: {reply.error}")
        log.info("dense global adapter after round %d: %s", at_round,
                 (reply.result or {}).get("status"))


def learner_for(context: Context) -> DaemonLearner:
    """The board's learner for a Flower context (its node id and node config)."""
    cfg = context.node_config
    socket = Path(str(cfg.get("control-socket", DEFAULT_SOCKET)))
    timeout = float(cfg.get("round-timeout-s", 1800.0))
    handoff = cfg.get("handoff-dir")
    return DaemonLearner(socket, int(context.node_id) & ((1 << 63) - 1), timeout,
                         handoff=Path(str(handoff)) if handoff else None)


app = make_client_app(learner_for)

"""``federated-global``: a dense global adapter for a device too far behind to replay.

When a device declines a round as ``behind`` (it missed rounds, or a purge removed its
state), the server sends the dense global adapter once with the next round. The SuperNode's
ClientApp (agent/federated/supernode_app.py) writes it into the handoff directory
(:mod:`agent.io.dense_handoff`) and asks the daemon here with the file's name, SHA-256 and
the round it stands for. The daemon verifies it (in the handoff directory, within the size the
bundle's LoRA layout allows, the hash, the layout, this bundle's id, the round, finite
values) and installs it as the device's global copy at that round, keeping the personal
delta and step counter (:mod:`agent.io.federated_state`). From then on the device replays
each new round's aggregate as usual.

A refused file changes nothing stored (the error says why); the handoff file is removed
either way once read, so no adapter lingers there. Not while a round's child runs (it owns
the state files then). Runs on the main loop; NumPy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import Field

from agent.core.bundle import lora_layout_of
from agent.core.federated_job import FEDERATED_DIR
from agent.core.fleet_documents import WireIn
from agent.io.bundle_files import read_manifest
from agent.io.dense_handoff import HandoffError, handoff_dir, read_dense
from agent.io.federated_state import FederatedState, load_state, save_state
from agent.services.daemon.commands import CommandTable, DaemonCommand, Reply
from agent.services.daemon.run_context import RunContext

log = logging.getLogger(__name__)


class FederatedGlobalRequest(WireIn):
    """``federated-global``: where the dense global adapter lies and what it must be."""

    path: str = Field(min_length=1, max_length=4096,
                      description="the safetensors file in the handoff directory")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the file's SHA-256, hex")
    round: int = Field(ge=1, description="the round the adapter stands for (after it)")
    bundle_id: str = Field(min_length=1, max_length=200, description="the round's bundle")


class DenseCatchUp:
    """Installs verified dense global adapters as the device's global copy.

    Args:
        ctx: the run context (config: the bundle and state directory; status updates).
        round_running: whether a round's child runs now (it owns the state files).

    The SuperNode creates the handoff directory (0700) when it first writes there.
    """

    def __init__(self, ctx: RunContext, round_running: Callable[[], bool]) -> None:
        self.ctx = ctx
        self.round_running = round_running
        self.state_dir = ctx.files.state_dir / FEDERATED_DIR
        self.incoming = handoff_dir(ctx.files.state_dir)

    def table(self) -> CommandTable:
        """The control socket's row: ``federated-global``."""
        return {"federated-global": DaemonCommand(FederatedGlobalRequest, self.install)}

    def install(self, args: FederatedGlobalRequest) -> Reply:
        """Verify and install the dense global adapter (see the module docstring).

        Raises:
            HandoffError: the adapter is refused; the message says why.
        """
        path = Path(args.path)
        try:
            return self._install(args, path)
        finally:
            self._discard(path)

    def _install(self, args: FederatedGlobalRequest, path: Path) -> Reply:
        cfg = self.ctx.config()
        if not cfg.federated.enabled:
            raise HandoffError("federated learning is off on this device "
                               "([federated] enabled = false)")
        if self.round_running():
            raise HandoffError("busy: a federated round runs; send the adapter with the next "
                               "round")
        manifest = read_manifest(cfg.bundle_dir)
        if args.bundle_id != manifest.bundle_id:
            raise HandoffError(f"the adapter is for bundle {args.bundle_id!r}; this device "
                               f"runs {manifest.bundle_id!r}")
        num_params = lora_layout_of(manifest).num_params
        dense = read_dense(path, directory=self.incoming, sha256=args.sha256,
                           bundle_id=manifest.bundle_id, at_round=args.round,
                           num_params=num_params)
        # the initial B only matters for a fresh state, whose global copy is replaced anyway
        state = load_state(self.state_dir, manifest.bundle_id, np.zeros(num_params, np.float32))
        if state.round >= dense.round:
            log.info("dense global adapter after round %d ignored: at round %d already",
                     dense.round, state.round)
            return {"status": "current", "round": state.round,
                    "reason": f"this device is at round {state.round} already"}
        before = state.round
        save_state(self.state_dir, FederatedState(manifest.bundle_id, dense.lora_b,
                                                  state.personal, dense.round,
                                                  state.steps_done))
        log.info("installed the dense global adapter after round %d (was at round %d)",
                 dense.round, before)
        self.ctx.state_changed()
        return {"status": "installed", "round": dense.round, "was": before}

    def _discard(self, path: Path) -> None:
        """Remove the handoff file if it lies in the handoff directory (never elsewhere)."""
        try:
            if path.parent.resolve() == self.incoming.resolve():
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc)

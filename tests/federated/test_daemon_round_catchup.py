"""A device behind the fleet catches up through the daemon (issue 20, operable).

The daemon, its store and the round child are real processes on the real ExecuTorch starter
bundle, asked through the SuperNode's own learner (:class:`DaemonLearner`) over the control
socket. A device replays each new round's aggregate onto its saved global copy (only that
round's seeds: bit-identical to the library's replay); a device that missed rounds declines
``behind``; the dense global adapter, handed over as a file in the daemon's handoff directory,
is verified and installed (a bad one is refused with the reason and nothing stored changes);
the next round replays onto it. Rounds follow ``[training] mode``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.federated.messages import DeviceReply, RoundInstructions, SparseWire
from agent.federated.pool import SeedPool
from agent.federated.replay import RoundUpdate, replay
from agent.federated.supernode_app import DaemonLearner
from agent.federated.wire import to_sparse
from agent.io.dense_handoff import handoff_dir, write_dense
from tests.federated.test_daemon_round import _bundle_id, _generator
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    base_config,
    seed_store,
    write_config,
)

pytestmark = [pytest.mark.runtime]

POOL, LR, Q = 64, 2e-3, 2
STATE_FILES = ("state.json", "global.npy", "personal.npy")


def _base(rnd: int) -> int:
    return 1000 + rnd  # each round's pool base (the server's draw; any fixed value here)


def _ins(bundle_id: str, rnd: int, previous: SparseWire | None = None,
         **over: Any) -> RoundInstructions:
    doc: dict[str, Any] = {
        "round": rnd, "bundle_id": bundle_id, "generator": _generator(),
        "pool_base": _base(rnd), "pool_size": POOL, "steps": 1, "q": Q, "lr": LR,
        "eps": 1e-2, "clip": 5.0, "previous": previous,
        "previous_pool_base": _base(rnd - 1) if previous is not None else None}
    return RoundInstructions(**(doc | over))


def _update(rnd: int, wire: SparseWire) -> RoundUpdate:
    return RoundUpdate(rnd, SeedPool(_base(rnd), POOL), to_sparse(wire), LR, Q)


def _daemon(tmp_path: Path, bundle: Path, **training: Any) -> DaemonProcess:
    device = FakeDevice(tmp_path / "device")
    state = tmp_path / "state"
    seed_store(state, n=12)
    sections = base_config(tmp_path, device, bundle, federated={"enabled": True},
                           constraints={"min_new_examples": 1_000_000}, training=training)
    daemon = DaemonProcess(write_config(tmp_path / "agent.toml", sections), state,
                           tmp_path / "daemon.log")
    daemon.wait_socket()
    return daemon


def _initial_b(bundle: Path) -> torch.Tensor:
    from agent.io.adapter_fs import AdapterValidator

    validator = AdapterValidator(bundle)
    return torch.from_numpy(validator.load_flat_b(validator.initial_dir).astype(np.float32))


def _global(state: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(state / "federated" / "global.npy"))


def _trained(reply: DeviceReply, log: str) -> SparseWire:
    assert reply.status == "trained", f"{reply}\n{log[-3000:]}"
    assert reply.accumulator is not None
    return reply.accumulator


def _stored(state: Path) -> dict[str, bytes]:
    return {n: (state / "federated" / n).read_bytes() for n in STATE_FILES}


def _refused(daemon: DaemonProcess, args: dict[str, Any]) -> str:
    from agent.io.control_socket import control_request

    reply = control_request(daemon.state_dir / "control.sock", "federated-global", args)
    assert not reply.ok, reply.result
    return reply.error or ""


def test_a_device_behind_catches_up_by_replay_and_by_a_dense_adapter(
        tmp_path: Path, starter_bundle: Path) -> None:
    daemon = _daemon(tmp_path, starter_bundle)
    state = tmp_path / "state"
    learner = DaemonLearner(state / "control.sock", salt=7, poll_s=0.2, timeout_s=240)
    bid = _bundle_id(starter_bundle)
    try:
        u1 = _trained(learner.train_round(_ins(bid, 1)), daemon.log())
        # round 2 carries round 1's aggregate (one device: its accumulator): replayed onto the
        # bundle's initial adapter, bit for bit what the library's replay gives
        u2 = _trained(learner.train_round(_ins(bid, 2, u1)), daemon.log())
        assert torch.equal(_global(state), replay(_initial_b(starter_bundle), _update(1, u1)))
        # the device misses round 3: round 4's previous is round 3's, which it never saw
        late = learner.train_round(_ins(bid, 4, u2, previous_pool_base=_base(3)))
        assert (late.status, late.at_round) == ("declined", 1), late
        assert late.reason.startswith("behind: at round 1")
        # round 2 started from the global copy: the personal delta is that round's own update
        # (one device: its accumulator is the aggregate), not rounds 1 and 2 together
        personal = torch.from_numpy(np.load(state / "federated" / "personal.npy"))
        torch.testing.assert_close(_global(state) + personal,
                                   replay(_global(state), _update(2, u2)), rtol=0, atol=1e-5)
        before = _stored(state)
        dense = (_global(state) + 1e-3 * torch.randn(_global(state).numel())).numpy()
        _bad_dense_adapters_are_refused(daemon, state, bid, dense)
        assert _stored(state) == before  # nothing stored changed
        # the server sends the dense global adapter after round 4 with round 5
        learner.load_global(torch.from_numpy(dense), 4)
        u5 = _trained(learner.train_round(_ins(bid, 5, u2, previous_pool_base=_base(4))),
                      daemon.log())
        assert np.array_equal(_global(state).numpy(), dense)  # round 4's aggregate: in it
        assert not list(handoff_dir(state).iterdir())  # the handoff file does not linger
        # round 6 replays only round 5's seeds onto the installed copy
        _trained(learner.train_round(_ins(bid, 6, u5)), daemon.log())
        assert torch.equal(_global(state), replay(torch.from_numpy(dense), _update(5, u5)))
        assert '"round": 5' in (state / "federated" / "state.json").read_text()
        assert '"steps_done": 4' in (state / "federated" / "state.json").read_text()
        status = daemon.status()["daemon"]["federated"]
        assert (status["round"], status["status"]) == (6, "trained")
    finally:
        daemon.terminate()


def _bad_dense_adapters_are_refused(daemon: DaemonProcess, state: Path, bid: str,
                                    dense: np.ndarray) -> None:
    incoming = handoff_dir(state)

    def offer(flat: np.ndarray, **over: Any) -> str:
        path, digest = write_dense(incoming, flat, bundle_id=over.pop("file_bundle", bid),
                                   at_round=4)
        args = {"path": str(path), "sha256": digest, "round": 4, "bundle_id": bid} | over
        return _refused(daemon, args)

    assert "SHA-256" in offer(dense, sha256="0" * 64)
    assert "layout needs F32" in offer(dense[:-1])
    nan = dense.copy()
    nan[5] = np.nan
    assert "NaN" in offer(nan)
    assert "for bundle 'other'" in offer(dense, file_bundle="other")
    assert "round" in offer(dense, round=3)
    outside = state / "elsewhere.safetensors"
    path, digest = write_dense(incoming, dense, bundle_id=bid, at_round=4)
    outside.write_bytes(path.read_bytes())
    assert "not in the handoff directory" in _refused(
        daemon, {"path": str(outside), "sha256": digest, "round": 4, "bundle_id": bid})
    assert outside.exists()  # a file outside the handoff directory is never touched
    data = path.read_bytes()[:-16]
    path.write_bytes(data)
    truncated = {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "round": 4,
                 "bundle_id": bid}
    assert "truncated" in _refused(daemon, truncated)


def test_a_round_follows_the_training_mode_or_declines_what_it_cannot_run(
        tmp_path: Path, starter_bundle: Path) -> None:
    daemon = _daemon(tmp_path, starter_bundle, mode="mezo")
    state = tmp_path / "state"
    learner = DaemonLearner(state / "control.sock", salt=7, poll_s=0.2, timeout_s=240)
    bid = _bundle_id(starter_bundle)
    try:
        acc = _trained(learner.train_round(_ins(bid, 1)), daemon.log())
        assert len(acc.indices) == Q  # one step, q distinct pool seeds
        assert '"mode": "mezo"' in (state / "federated" / "round_job.json").read_text()
    finally:
        daemon.terminate()
    # a prge-dual step with q=4 needs 8 slices; the starter exports 1, 2 and 4: declined
    # with the shapes it has, before any step
    dual = _daemon(tmp_path / "dual", starter_bundle, mode="prge-dual")
    try:
        learner = DaemonLearner(tmp_path / "dual" / "state" / "control.sock", salt=7,
                                poll_s=0.2, timeout_s=240)
        no = learner.train_round(_ins(bid, 1, q=4))
        assert no.status == "declined" and "needs a 8x2" in no.reason, no
    finally:
        dual.terminate()

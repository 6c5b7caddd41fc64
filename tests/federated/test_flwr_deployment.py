"""The fleet on Flower's real deployment runtime: ``flower-superlink``, ``flower-supernode``
processes and ``flwr run fleet_app`` on loopback, the ServerApp reading its run config and
keeping its round history in a state file, so a restarted server goes on where it stopped
and the devices' global adapters stay bit-identical to a never-restarted server's.

The devices are the in-process learner ClientApp on analytic losses, kept in files between
rounds (tests/federated/flwr_devices.py); Flower polls every 3 s and starts one process per
message, so a round takes ~15 s here. The daemon-backed SuperNode app has its own tests
(test_daemon_round_supernode.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import Context

from agent.federated.client_app import DeviceLearner, make_client_app
from agent.federated.history import load_history
from agent.federated.inprocess import InProcessGrid, run_fleet
from agent.federated.replay import RoundUpdate
from agent.federated.server_app import make_server_app
from agent.federated.strategy import SeedStrategy
from tests.federated.fleet_support import BUNDLE, settings
from tests.federated.flwr_devices import device, read_state
from tests.federated.flwr_support import (
    APP,
    FlowerDeployment,
    app_with_clientapp,
    flower_missing,
)

pytestmark = pytest.mark.skipif(flower_missing() is not None,
                                reason=flower_missing() or "")

DEVICES_APP = "tests.federated.flwr_devices:app"
RUN = {"bundle-id": BUNDLE, "pool-size": 64, "steps": 3, "q": 2, "lr": 0.05, "eps": 0.001,
       "clip": 50.0, "seed": 11, "wait-nodes-s": 90.0, "round-timeout-s": 120.0}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[FlowerDeployment]:
    d = FlowerDeployment(tmp_path)
    try:
        yield d
    finally:
        d.close()


def _ran(deployment: FlowerDeployment, result: object) -> None:
    out = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    assert getattr(result, "returncode", 1) == 0, (
        out[-3000:] + "\n--- superlink ---\n" + deployment.log("superlink"))
    assert "Successfully started run" in out, out[-3000:]


def _reference(rounds: list[dict[int, float]]) -> tuple[SeedStrategy, dict[int, DeviceLearner]]:
    """A never-restarted server and in-process devices: round r runs the nodes (id: target)
    of ``rounds[r - 1]``; a device keeps its learner when its node id changes (salt follows)."""
    strategy = SeedStrategy(settings())
    by_target: dict[float, DeviceLearner] = {}
    for nodes in rounds:
        devices = {}
        for node, target in nodes.items():
            learner = by_target.setdefault(target, device(node, target))
            learner.salt = node
            devices[node] = learner
        grid = InProcessGrid(make_client_app(_lookup(devices)), sorted(devices))
        run_fleet(make_server_app(strategy, 1), grid)
    return strategy, {int(d.salt): d for d in by_target.values()}


def _lookup(devices: dict[int, DeviceLearner]) -> Callable[[Context], DeviceLearner]:
    return lambda ctx: devices[ctx.node_id]


def _same_rounds(a: list[RoundUpdate], b: list[RoundUpdate]) -> bool:
    return [(u.round, u.pool, u.update, u.lr, u.q) for u in a] == [
        (u.round, u.pool, u.update, u.lr, u.q) for u in b]


def test_a_real_superlink_runs_rounds_and_a_restarted_server_goes_on(
        deployment: FlowerDeployment, tmp_path: Path) -> None:
    app = app_with_clientapp(tmp_path / "app", DEVICES_APP)
    state = tmp_path / "server-state.json"
    deployment.start_superlink()
    targets = {0: 1.0, 1: 3.0}
    for i, target in targets.items():
        deployment.start_supernode(i, {"state-dir": str(tmp_path / f"device-{i}"),
                                       "target": target})
    config = RUN | {"min-nodes": len(targets), "state-file": str(state)}
    _ran(deployment, deployment.run(app, config | {"num-server-rounds": 1}))
    assert [u.round for u in load_history(state, _fingerprint()).rounds] == [1]
    # a new `flwr run` is a new ServerApp process: it reads the state file and sends round 2
    _ran(deployment, deployment.run(app, config | {"num-server-rounds": 1}))
    stored = load_history(state, _fingerprint()).rounds
    assert [u.round for u in stored] == [1, 2]
    devices = [read_state(tmp_path / f"device-{i}") for i in targets]
    assert all(d["trained"] == [1, 2] for d in devices)  # round 2 taken, not declined stale
    assert all(d["round"] == 1 for d in devices)  # round 1 replayed from round 2's message
    reference, ref_devices = _reference([{int(d["node_id"]): float(d["target"])
                                          for d in devices}] * 2)
    assert _same_rounds(stored, reference.history)
    for d in devices:
        ref = ref_devices[int(d["node_id"])]
        assert torch.equal(d["glob"], ref.glob.lora_b)
        assert torch.equal(d["personal"], ref.personal)


def _fingerprint() -> dict[str, object]:
    return SeedStrategy(settings()).fingerprint()


@pytest.mark.slow
def test_three_supernodes_survive_a_superlink_restart_between_rounds(
        deployment: FlowerDeployment, tmp_path: Path) -> None:
    """Two rounds, then the ServerApp and the SuperLink both stop; a SuperLink restarted on
    its database and a new ServerApp on the state file run round 3: bit-identical to a
    server that never stopped."""
    app = app_with_clientapp(tmp_path / "app", DEVICES_APP)
    state, database = tmp_path / "server-state.json", tmp_path / "superlink.db"
    deployment.start_superlink(database=database)
    targets = {0: 1.0, 1: 2.0, 2: 4.0}
    for i, target in targets.items():
        deployment.start_supernode(i, {"state-dir": str(tmp_path / f"device-{i}"),
                                       "target": target})
    config = RUN | {"min-nodes": len(targets), "state-file": str(state)}
    _ran(deployment, deployment.run(app, config | {"num-server-rounds": 2}))
    before = [read_state(tmp_path / f"device-{i}") for i in targets]
    deployment.stop_superlink()
    deployment.start_superlink(database=database)
    _ran(deployment, deployment.run(app, config | {"num-server-rounds": 1}))
    stored = load_history(state, _fingerprint()).rounds
    assert [u.round for u in stored] == [1, 2, 3]
    devices = [read_state(tmp_path / f"device-{i}") for i in targets]
    assert all(d["trained"] == [1, 2, 3] and d["round"] == 2 for d in devices)
    rounds = [{int(d["node_id"]): float(d["target"]) for d in before}] * 2 + [
        {int(d["node_id"]): float(d["target"]) for d in devices}]
    reference, ref_devices = _reference(rounds)
    assert _same_rounds(stored, reference.history)
    for d in devices:
        assert torch.equal(d["glob"], ref_devices[int(d["node_id"])].glob.lora_b)


@pytest.mark.slow
@pytest.mark.runtime
def test_the_shipped_fleet_app_runs_rounds_through_a_real_daemon(
        deployment: FlowerDeployment, tmp_path: Path, starter_bundle: Path) -> None:
    """fleet_app/ as shipped: its ClientApp (supernode_app) asks a real daemon, on the
    starter bundle, for each round over the control socket."""
    from agent.io.bundle_files import read_manifest
    from tests.integration.daemon_support import (
        DaemonProcess,
        FakeDevice,
        base_config,
        seed_store,
        write_config,
    )

    device_dir, daemon_state = tmp_path / "device", tmp_path / "state"
    seed_store(daemon_state, n=12)
    sections = base_config(tmp_path, FakeDevice(device_dir), starter_bundle,
                           federated={"enabled": True},
                           constraints={"min_new_examples": 1_000_000})
    daemon = DaemonProcess(write_config(tmp_path / "agent.toml", sections), daemon_state,
                           tmp_path / "daemon.log")
    try:
        daemon.wait_socket()
        deployment.start_superlink()
        deployment.start_supernode(0, {"control-socket": str(daemon_state / "control.sock"),
                                       "round-timeout-s": 600.0})
        state = tmp_path / "server-state.json"
        bundle_id = read_manifest(starter_bundle).bundle_id
        _ran(deployment, deployment.run(APP, {
            "bundle-id": bundle_id, "pool-size": 64, "steps": 2, "q": 2, "lr": 2e-3,
            "eps": 1e-2, "clip": 5.0, "num-server-rounds": 2, "min-nodes": 1,
            "state-file": str(state), "round-timeout-s": 600.0}, timeout_s=1200))
        stored = load_history(state, {"bundle_id": bundle_id, "pool_size": 64, "lr": 2e-3,
                                      "q": 2, "seed": 0, "fedkseed_pro": False}).rounds
        assert [u.round for u in stored] == [1, 2]
        assert all(u.update.indices for u in stored), daemon.log()[-3000:]  # both trained
        assert daemon.status()["daemon"]["federated"]["round"] == 2
    finally:
        daemon.terminate()

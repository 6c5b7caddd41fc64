"""A real daemon answers federated rounds over its control socket (issue 20, wiring).

The daemon, its store and the round child are real processes on the real ExecuTorch starter
bundle; only the device tree (charger, battery, load) is fake. A round the policy allows
returns the child's clipped per-seed accumulator over the whole pool and the example count,
and the device's global adapter plus its round's own update goes through the eval gate
(served when it beats the serving adapter, kept out otherwise); a device off its charger
declines with the policy's reason; a device that did not opt in declines with "off".
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from agent.federated.messages import DeviceReply
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    base_config,
    seed_store,
    write_config,
)

pytestmark = [pytest.mark.runtime]

POOL = 64
CLIP = 5.0


def _instructions(bundle_id: str, rnd: int = 1) -> dict[str, Any]:
    return {"round": rnd, "bundle_id": bundle_id, "generator": _generator(),
            "pool_base": 12345, "pool_size": POOL, "steps": 2, "q": 2, "lr": 2e-3,
            "eps": 1e-2, "clip": CLIP}


def _generator() -> str:
    from agent.federated.pool import GENERATOR

    return GENERATOR


def _bundle_id(bundle: Path) -> str:
    from agent.io.bundle_files import read_manifest

    return read_manifest(bundle).bundle_id


def _active(state: Path) -> str | None:
    from agent.io.registry import AdapterRegistry

    return AdapterRegistry(state / "adapters").active()


def _daemon(tmp_path: Path, bundle: Path, device: FakeDevice, *, enabled: bool = True,
            margin: float = 0.0) -> DaemonProcess:
    state = tmp_path / "state"
    seed_store(state, n=12)
    # no run of its own: the store never has "enough new examples" for one
    sections = base_config(tmp_path, device, bundle, federated={"enabled": enabled},
                           constraints={"min_new_examples": 1_000_000},
                           adapters={"eval_margin": margin})
    daemon = DaemonProcess(write_config(tmp_path / "agent.toml", sections), state,
                           tmp_path / "daemon.log")
    daemon.wait_socket()
    return daemon


def _round(daemon: DaemonProcess, args: dict[str, Any], timeout: float = 240.0
           ) -> dict[str, Any]:
    """Ask, then poll the same request until the round is no longer running."""
    deadline = time.monotonic() + timeout
    while True:
        answer = daemon.control("federated-round", args)
        if answer["status"] != "running":
            return answer
        assert time.monotonic() < deadline, f"round still running\n{daemon.log()[-3000:]}"
        time.sleep(0.5)


def test_an_allowed_round_returns_a_clipped_accumulator_over_the_pool(
        tmp_path: Path, starter_bundle: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    daemon = _daemon(tmp_path, starter_bundle, device)
    try:
        bundle_id = _bundle_id(starter_bundle)
        args = {"round": 1, "salt": 7, "instructions": _instructions(bundle_id)}
        answer = _round(daemon, args)
        assert answer["status"] == "trained", answer
        reply = DeviceReply.model_validate(answer["reply"])
        assert reply.accumulator is not None and reply.accumulator.size == POOL
        assert reply.accumulator.values  # 2 steps x q=2 draws: some slots moved
        assert all(math.isfinite(v) and abs(v) <= CLIP for v in reply.accumulator.values)
        assert reply.examples > 0 and reply.bundle_id == bundle_id
        # a poll of the finished round answers the same reply; the status shows it
        assert daemon.control("federated-round", args) == answer
        status = daemon.status()
        assert status["daemon"]["federated"]["round"] == 1
        assert status["daemon"]["federated"]["status"] == "trained"
        # global + this round's update went through the eval gate against the serving adapter:
        # served (the registry's active version) or kept with the gate's reason
        served = answer["served"]
        assert served.startswith(("serving v", "kept initial")), served
        assert status["daemon"]["federated"]["served"] == served
        active = _active(tmp_path / "state")
        assert active == (served.split()[1] if served.startswith("serving") else None)
        # the device's state went on: its step counter and the global round are saved
        state = (tmp_path / "state" / "federated" / "state.json").read_text()
        assert '"steps_done": 2' in state
        # the snapshot of the user's data does not linger
        assert not (tmp_path / "state" / "federated" / "train.jsonl").exists()
        # a wrong bundle id is declined by the device's learner, not aggregated
        bad = _instructions("another-bundle", rnd=2)
        other = _round(daemon, {"round": 2, "salt": 7, "instructions": bad})
        assert other["status"] == "declined" and "bundle" in other["reason"]
        # a purge: the personal delta and the global copy (trained on the user's rows, with
        # no data window recorded) are removed, the served federated version rolled back
        _purge_all(tmp_path / "state")
        fed = tmp_path / "state" / "federated"
        deadline = time.monotonic() + 30
        while any((fed / n).exists() for n in ("state.json", "global.npy", "personal.npy")):
            assert time.monotonic() < deadline, daemon.log()[-3000:]
            time.sleep(0.2)
        assert _active(tmp_path / "state") in (None, "initial")
    finally:
        daemon.terminate()


def _purge_all(state: Path) -> None:
    from agent.io.store import InteractionStore

    store = InteractionStore(state / "interactions.sqlite3")
    try:
        assert store.purge() > 0
    finally:
        store.close()


def test_a_device_off_its_charger_declines_with_the_policys_reason(
        tmp_path: Path, starter_bundle: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    device.plug(False)
    daemon = _daemon(tmp_path, starter_bundle, device)
    try:
        args = {"round": 1, "salt": 7,
                "instructions": _instructions(_bundle_id(starter_bundle))}
        answer = daemon.control("federated-round", args)
        assert answer["status"] == "declined"
        assert answer["reason"].startswith("power"), answer
        assert daemon.status()["daemon"]["federated"]["status"] == "declined"
        assert not (tmp_path / "state" / "federated" / "round_job.json").exists()
    finally:
        daemon.terminate()


def test_a_device_that_did_not_opt_in_declines(tmp_path: Path, starter_bundle: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    daemon = _daemon(tmp_path, starter_bundle, device, enabled=False)
    try:
        args = {"round": 1, "salt": 7,
                "instructions": _instructions(_bundle_id(starter_bundle))}
        answer = daemon.control("federated-round", args)
        assert answer == {"status": "declined", "round": 1,
                          "reason": "federated learning is off on this device "
                                    "([federated] enabled = false)"}
    finally:
        daemon.terminate()


def test_a_round_that_fails_the_eval_gate_keeps_the_serving_adapter(
        tmp_path: Path, starter_bundle: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    # a 90 % better held-out loss after two steps: no round passes that gate
    daemon = _daemon(tmp_path, starter_bundle, device, margin=0.9)
    try:
        args = {"round": 1, "salt": 3,
                "instructions": _instructions(_bundle_id(starter_bundle))}
        answer = _round(daemon, args)
        assert answer["status"] == "trained", answer
        assert answer["served"].startswith("kept initial: "), answer["served"]
        assert _active(tmp_path / "state") is None  # still the bundle's own adapter
    finally:
        daemon.terminate()

"""``push-bundle`` end to end with the real inference service (issue 19 item 2): a bundle that
does not load is rolled back and the old bundle and its trained adapter serve again; a good
one is committed, the service serves it (its id in /health, a generation answers) with the
new bundle's own adapter, and the daemon's registry no longer names the old bundle's; kill -9
of the daemon inside a bundle's health window rolls the link and the adapter back at its
next start, and the service follows."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.controller.push import PushOptions, push_one
from agent.controller.push_manifest import build_artifact
from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.io.registry import AdapterRegistry
from tests.integration.artifact_support import DEVICE, rig
from tests.integration.bundle_copies import relabeled_copy
from tests.integration.daemon_support import ServiceProcess
from tests.integration.serve_adapters import publish_value

pytestmark = [pytest.mark.runtime, pytest.mark.broker]

CHUNK = 44 * 1024
FAST_LINK = {"inbound_rate_per_s": 400.0, "inbound_burst": 100}


def _health(service: ServiceProcess) -> dict[str, Any]:
    return service.client().health()  # type: ignore[no-any-return]


def _wait(service: ServiceProcess, bundle_id: str, adapter: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        h = _health(service)
        if h["bundle_id"] == bundle_id and h["adapter"]["version"] == adapter:
            return
        assert time.monotonic() < deadline, h
        time.sleep(0.1)


def test_push_bundle_rolls_back_a_broken_one_and_commits_a_good_one(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    link = state / "bundles" / "current"
    first = relabeled_copy(starter_bundle, state / "bundles" / "first", "first")
    link.symlink_to("first")
    first_id = read_manifest(first).bundle_id
    registry = AdapterRegistry(state / "adapters", validator=AdapterValidator(link))
    trained = publish_value(registry, first, tmp_path / "trained", 0.02, activate=True)
    second = relabeled_copy(starter_bundle, tmp_path / "second", "second")
    second_id = read_manifest(second).bundle_id
    broken = relabeled_copy(starter_bundle, tmp_path / "broken", "broken")
    (broken / "infer.pte").write_bytes(b"not a program")
    service = ServiceProcess(link, state, tmp_path / "serve.log")
    r = rig(tmp_path, link, broker, fleet, url=service.url, service={"bundle_dir": str(link)},
            mqtt=FAST_LINK)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        assert _health(service)["adapter"]["version"] == trained
        # a bundle whose program does not load: the service keeps the old one and says why
        res = r.push(build_artifact(broken, "bundle", CHUNK), health_window_s=1.0,
                     rate_per_s=360.0)
        assert res.status == "FAILED" and "rolled back to first" in res.detail, res
        assert "could not load bundle" in res.detail, res
        assert os.readlink(link) == "first"
        assert AdapterRegistry(state / "adapters").active() == trained  # restored
        _wait(service, first_id, trained)
        # a good one: committed, served, probed; the old bundle's adapter steps aside
        res = r.push(build_artifact(second, "bundle", CHUNK), health_window_s=1.0,
                     rate_per_s=360.0)
        assert res.status == "SUCCEEDED", res
        out = res.job["result"]  # type: ignore[index]
        assert out["outcome"] == "committed" and out["bundle_id"] == second_id
        assert "probe ok" in out["health"]
        assert os.readlink(link) == second_id and r.journal()["step"] == "committed"
        health = _health(service)
        assert health["bundle_id"] == second_id and health["model"] == "second"
        assert health["adapter"]["version"] == "initial"
        assert AdapterRegistry(state / "adapters").active() == "initial"
        reply = service.client().chat("hello", max_tokens=2)
        assert reply.status == 200 and reply.json["adapter_version"] == "initial"
        assert daemon.terminate() == 0
        # the daemon starts again on the new bundle (its registry validates against it)
        daemon = r.start(sub, "daemon2.log")
        daemon.wait_socket()
        assert os.readlink(link) == second_id
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        service.stop()


def test_kill9_in_a_bundle_push_health_window_rolls_back_at_start(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    link = state / "bundles" / "current"
    first = relabeled_copy(starter_bundle, state / "bundles" / "first", "first")
    link.symlink_to("first")
    first_id = read_manifest(first).bundle_id
    registry = AdapterRegistry(state / "adapters", validator=AdapterValidator(link))
    trained = publish_value(registry, first, tmp_path / "trained", 0.02, activate=True)
    second = relabeled_copy(starter_bundle, tmp_path / "second", "second")
    second_id = read_manifest(second).bundle_id
    service = ServiceProcess(link, state, tmp_path / "serve.log")
    r = rig(tmp_path, link, broker, fleet, url=service.url, service={"bundle_dir": str(link)},
            mqtt=FAST_LINK)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        artifact = build_artifact(second, "bundle", CHUNK)
        with r.client() as fc:
            threading.Thread(target=_push_quietly, args=(fc, artifact), daemon=True).start()
            _wait(service, second_id, "initial")  # activated and served: inside the window
            assert r.journal()["step"] == "health"
            daemon.kill()  # SIGKILL before the commit
        assert os.readlink(link) == second_id
        daemon = r.start(sub, "daemon2.log")
        daemon.wait_socket()
        assert os.readlink(link) == "first" and not (link.parent / second_id).exists()
        assert AdapterRegistry(state / "adapters").active() == trained
        assert r.journal()["step"] == "rolled_back"
        _wait(service, first_id, trained)  # the service follows the link back by itself
        assert service.client().chat("hello", max_tokens=2).status == 200
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        service.stop()


def _push_quietly(fc: Any, artifact: Any) -> None:
    try:
        push_one(fc, DEVICE, artifact, PushOptions(health_window_s=120.0, answer_timeout_s=5.0,
                                                   rate_per_s=360.0))
    except Exception:  # noqa: BLE001, S110 - the daemon is killed under it on purpose
        return

"""Artifact pushes against the real daemon on a real mosquitto: what is refused and what is
rolled back (issue 19 item 2). The bundle is the tiny one (no program runs) and no inference
service listens, so every health window here fails: the pushes that pass one are in
test_artifact_push_served.py (the real service on the starter bundle).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.controller.push import PushOptions, _Transfer, push_one
from agent.controller.push_manifest import Artifact, build_artifact
from tests.integration.artifact_support import DEVICE, rig, send_some_chunks, tiny_bundle
from tests.io.disk_mount import small_disk
from tests.io.tiny_bundle import make_adapter

pytestmark = [pytest.mark.broker]


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path / "bundle")


def _nothing_changed(r: Any) -> None:
    reg = r.registry()
    assert reg.active() in (None, "initial") and reg.versions() == []


def test_push_that_fails_its_health_window_is_rolled_back_and_says_why(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        res = r.push(r.adapter(0.25), health_window_s=2.0)
        assert res.status == "FAILED", res
        assert "rolled back to initial" in res.detail
        assert "did not answer /health" in res.detail
        assert res.chunks_sent == r.adapter(0.25).manifest.chunks and res.resent == 0
        _nothing_changed(r)  # the pushed version was deleted, the initial adapter serves
        assert r.journal()["step"] == "rolled_back"
        assert not list((r.state / "artifacts").glob("adapter-*"))  # staging cleaned up
        assert "rolled back pushed adapter v0001" in daemon.log()
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def test_corrupted_chunk_wrong_bundle_and_lying_manifest_are_refused(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        good = r.adapter(0.5)
        # an adapter trained for another bundle: refused from its manifest, before staging
        other = good.manifest.model_copy(update={"bundle_id": "b" * 16})
        res = r.push(Artifact(other, good.blob))
        assert res.status == "REJECTED", res
        assert "trained for bundle bbbb" in res.detail and "push an adapter trained" in res.detail
        assert not (r.state / "artifacts" / other.artifact_id).exists()
        # a corrupted chunk: its reply says so, it is not stored, and nothing changes
        send_some_chunks(r, good, [], transfer_timeout_s=3.0)  # the job then gives up
        with r.client() as fc:
            t = _Transfer(fc, DEVICE, good, PushOptions())
            bad = bytearray(good.chunk(0))
            bad[10] ^= 0xFF
            answer = t.ask("artifact-chunk", {"artifact_id": good.manifest.artifact_id,
                                              "index": 0,
                                              "data": base64.b64encode(bytes(bad)).decode()})
            assert not answer.ok and answer.error is not None
            assert answer.error.code == "rejected" and "does not match" in answer.error.message
            status = t.ask("artifact-status", {"artifact_id": good.manifest.artifact_id})
            assert 0 in (status.result or {})["missing"]
            _wait_not_receiving(t, good)
        # a manifest whose chunks are right but whose file hash lies: refused after staging
        files = [f.model_copy(update={"sha256": "0" * 64}) if i == 0 else f
                 for i, f in enumerate(good.manifest.files)]
        lying = good.manifest.model_copy(update={"files": files})
        res = r.push(Artifact(lying, good.blob))
        assert res.status == "REJECTED", res
        assert "does not match its sha256" in res.detail and "nothing was changed" in res.detail
        _nothing_changed(r)
        assert r.journal()["step"] == "refused"
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def _wait_not_receiving(t: _Transfer, artifact: Artifact, timeout: float = 30.0) -> None:
    """Until the device's staging job ended (its transfer timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        status = t.ask("artifact-status", {"artifact_id": artifact.manifest.artifact_id})
        if (status.result or {}).get("state") == "not_receiving":
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def test_push_is_refused_before_staging_when_the_disk_is_too_full(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    with small_disk(tmp_path / "disk", size="16m") as disk:
        r = rig(tmp_path, bundle, broker, fleet, state=disk.path / "state")
        sub = sub_factory(r.topics.available)
        daemon = r.start(sub)
        try:
            disk.fill(leave=2 << 20)  # 2 MiB: less than a push keeps in reserve
            res = r.push(r.adapter(0.5))
            assert res.status == "REJECTED", res
            assert "not enough disk at" in res.detail and "free space on the device" in res.detail
            assert not list((r.state / "artifacts").glob("adapter-*"))  # nothing staged
            _nothing_changed(r)
            disk.free()
            assert daemon.terminate() == 0
        finally:
            daemon.kill()


def test_kill9_while_staging_keeps_the_chunks_and_the_previous_adapter(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    artifact = r.adapter(0.75)
    total = artifact.manifest.chunks
    assert total >= 2
    try:
        send_some_chunks(r, artifact, [0])
        daemon.kill()  # SIGKILL mid-staging
        _nothing_changed(r)
        assert r.journal()["step"] == "staging"
        daemon = r.start(sub, "daemon2.log")
        res = r.push(artifact, health_window_s=1.0)
        assert res.chunks_sent == total - 1, res  # only the missing chunks were sent again
        assert res.status == "FAILED" and "rolled back" in res.detail  # no service here
        _nothing_changed(r)
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def test_kill9_between_activation_and_commit_rolls_back_at_start(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        daemon.wait_socket()
        # the registry sleeps right after switching its active pointer to the pushed version
        daemon.control("debug-publish-delay", {"stage": "switched", "seconds": 120})
        artifact = r.adapter(0.125)
        with r.client() as fc:
            threading.Thread(target=_quiet, args=(fc, artifact), daemon=True).start()
            deadline = time.monotonic() + 60
            while "debug: publish sleeping" not in daemon.log():
                assert time.monotonic() < deadline, daemon.log()[-3000:]
                time.sleep(0.1)
        daemon.kill()  # SIGKILL: the pushed adapter is active, never committed
        reg = r.registry()
        assert reg.active() == "v0001"
        assert r.journal()["step"] == "activating"
        daemon = r.start(sub, "daemon2.log")
        daemon.wait_socket()
        _nothing_changed(r)  # recovered at start: the initial adapter serves again
        journal = r.journal()
        assert journal["step"] == "rolled_back" and "before it was committed" in journal["reason"]
        assert "rolled back at start" in daemon.log()
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def _quiet(fc: Any, artifact: Artifact) -> None:
    # the daemon is killed under it on purpose
    with contextlib.suppress(Exception):
        push_one(fc, DEVICE, artifact, PushOptions(answer_timeout_s=5.0))


def test_push_bundle_refusals_and_rollback_keep_the_serving_bundle(
        tmp_path: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    link = state / "bundles" / "current"
    first = tiny_bundle(state / "bundles" / "first")
    link.symlink_to("first")
    newer = tiny_bundle(tmp_path / "newer", seed=1)  # another LoRA-A: another bundle id
    r = rig(tmp_path, link, broker, fleet, service={"bundle_dir": str(link)})
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        good = build_artifact(newer, "bundle", 4096)
        # what the bundle's own manifest says must be what the push says
        lying = Artifact(good.manifest.model_copy(update={"bundle_id": "c" * 16}), good.blob)
        res = r.push(lying)
        assert res.status == "REJECTED" and "own manifest says bundle id" in res.detail, res
        assert os.readlink(link) == "first"
        # the good bundle activates, fails its health window (no service) and is rolled back
        res = r.push(good, health_window_s=1.0)
        assert res.status == "FAILED" and "rolled back to first" in res.detail, res
        assert os.readlink(link) == "first" and first.is_dir()
        assert not (link.parent / good.manifest.bundle_id).exists()
        # the bundle that serves already is not pushed again
        res = r.push(build_artifact(first, "bundle", 4096))
        assert res.status == "REJECTED" and "already serves bundle" in res.detail, res
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def test_push_bundle_needs_the_managed_bundle_link(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        res = r.push(build_artifact(tiny_bundle(tmp_path / "other", seed=2), "bundle", 4096))
        assert res.status == "REJECTED", res
        assert "bundle_dir = " in res.detail and "bundles/current" in res.detail
        assert not list((r.state / "artifacts").glob("bundle-*"))  # nothing staged
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def test_cli_push_adapter_to_all_devices_reports_each_outcome(
        tmp_path: Path, bundle: Path, broker: Any, sub_factory: Any, fleet: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.controller.cli import main

    r = rig(tmp_path, bundle, broker, fleet)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        adapter = make_adapter(bundle, tmp_path / "cli-adapter", 0.5)
        code = main(["--host", broker.host, "--port", str(broker.port), "--fleet", fleet,
                     "push-adapter", "--all", str(adapter), "--bundle-id",
                     r.registry().validator.bundle_id, "--health-window", "1"])  # type: ignore[union-attr]
        out = json.loads(capsys.readouterr().out)
        assert code == 1, out  # no service answers here: rolled back, reported
        [result] = out["results"]
        assert result["device"] == DEVICE and result["status"] == "FAILED"
        assert "rolled back to initial" in result["detail"]
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

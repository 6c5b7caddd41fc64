"""Adapter pushes that the real inference service serves (starter bundle): committed after
its health window; kill -9 of the daemon inside the window rolls it back at the next start,
and the service follows the registry back (issue 19 item 2)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.controller.push import PushOptions, push_one
from tests.integration.artifact_support import DEVICE, rig
from tests.integration.daemon_support import ServiceProcess, seed_store

pytestmark = [pytest.mark.runtime, pytest.mark.broker]


def _serving(service: ServiceProcess) -> str | None:
    return (service.client().health().get("adapter") or {}).get("version")


def _wait_serving(service: ServiceProcess, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _serving(service) != version:
        assert time.monotonic() < deadline, f"service serves {_serving(service)}, not {version}"
        time.sleep(0.1)


def test_good_adapter_push_is_committed_and_served(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    seed_store(state, n=24)  # held-out examples: the eval gate runs
    service = ServiceProcess(starter_bundle, state, tmp_path / "serve.log")
    r = rig(tmp_path, starter_bundle, broker, fleet, url=service.url)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        # B = 0, as the bundle's own adapter: the same held-out loss, so no regression
        artifact = r.adapter(0.0, chunk_size=44 * 1024)
        res = r.push(artifact, health_window_s=2.0)
        assert res.status == "SUCCEEDED", res
        out = res.job["result"]  # type: ignore[index]
        assert out["version"] == "v0001" and out["outcome"] == "committed"
        assert "served v0001" in out["health"] and "eval gate: held-out loss" in out["health"]
        assert _serving(service) == "v0001" and r.registry().active() == "v0001"
        pushed = r.registry().manifest("v0001").metrics["artifact_id"]
        assert pushed == artifact.manifest.artifact_id
        assert r.journal()["step"] == "committed"
        assert service.client().chat("hi", max_tokens=2).status == 200
        rate = res.bytes_sent / max(res.transfer_s, 1e-6) / 1024
        print(f"pushed {res.bytes_sent} bytes in {res.chunks_sent} chunks of "
              f"{artifact.manifest.chunk_size} in {res.transfer_s:.2f} s: {rate:.0f} KiB/s")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        service.stop()


def test_adapter_that_regresses_the_eval_gate_is_rolled_back_and_reported(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    seed_store(state, n=24)
    service = ServiceProcess(starter_bundle, state, tmp_path / "serve.log")
    r = rig(tmp_path, starter_bundle, broker, fleet, url=service.url)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        # the random starter model: which of two adapters does better is found by pushing;
        # whichever does worse than what it replaces is the regression
        first = r.push(r.adapter(2.0, chunk_size=44 * 1024), health_window_s=1.0)
        if first.status == "SUCCEEDED":
            bad, serving = r.push(r.adapter(0.0, chunk_size=44 * 1024),
                                  health_window_s=1.0), "v0001"
        else:
            bad, serving = first, "initial"
        assert bad.status == "FAILED", bad
        assert f"rolled back to {serving}: the eval gate: held-out loss" in bad.detail
        assert "is worse than the replaced adapter's" in bad.detail
        assert r.registry().active() == serving
        assert r.registry().versions() == ([] if serving == "initial" else ["v0001"])
        _wait_serving(service, serving)
        assert r.journal()["step"] == "rolled_back"
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        service.stop()


def test_kill9_during_the_health_window_rolls_back_at_start(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str) -> None:
    state = tmp_path / "state"
    service = ServiceProcess(starter_bundle, state, tmp_path / "serve.log")
    r = rig(tmp_path, starter_bundle, broker, fleet, url=service.url)
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        artifact = r.adapter(0.02, chunk_size=44 * 1024)
        with r.client() as fc:
            threading.Thread(target=_push_quietly, args=(fc, artifact), daemon=True).start()
            deadline = time.monotonic() + 120
            while not (state / "artifacts" / "journal.json").exists() or \
                    r.journal()["step"] != "health":
                assert time.monotonic() < deadline, daemon.log()[-3000:]
                time.sleep(0.1)
            _wait_serving(service, "v0001")  # activated and served: inside the window
            daemon.kill()  # SIGKILL before the commit
        assert r.registry().active() == "v0001"
        daemon = r.start(sub, "daemon2.log")
        daemon.wait_socket()
        assert r.registry().active() == "initial" and r.registry().versions() == []
        assert r.journal()["step"] == "rolled_back"
        _wait_serving(service, "initial")  # the service follows the pointer back by itself
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        service.stop()


def _push_quietly(fc: Any, artifact: Any) -> None:
    try:
        push_one(fc, DEVICE, artifact, PushOptions(health_window_s=120.0, answer_timeout_s=5.0))
    except Exception:  # noqa: BLE001, S110 - the daemon is killed under it on purpose
        return

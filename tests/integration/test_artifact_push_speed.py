"""How fast a push crosses loopback: ``push-bundle`` of the starter bundle to the real daemon
on a real mosquitto, at the device's default inbound rate limit and at a raised one (slow:
tens of seconds). The numbers are printed, never asserted (a benchmark, not a timing test);
the push is then rolled back (no service runs the new bundle here), which is checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.controller.push_manifest import build_artifact
from agent.core.artifact import DEFAULT_CHUNK_SIZE
from tests.integration.artifact_support import rig, tiny_bundle

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.mark.parametrize(("device_rate", "controller_rate"), [(20.0, 18.0), (400.0, 360.0)])
def test_push_bundle_throughput_over_loopback(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str,
        device_rate: float, controller_rate: float) -> None:
    state = tmp_path / "state"
    link = state / "bundles" / "current"
    tiny_bundle(state / "bundles" / "first")
    link.symlink_to("first")
    r = rig(tmp_path, link, broker, fleet, service={"bundle_dir": str(link)},
            mqtt={"inbound_rate_per_s": device_rate, "inbound_burst": 100})
    sub = sub_factory(r.topics.available)
    daemon = r.start(sub)
    try:
        artifact = build_artifact(starter_bundle, "bundle", DEFAULT_CHUNK_SIZE)
        res = r.push(artifact, health_window_s=0.0, rate_per_s=controller_rate,
                     transfer_timeout_s=600.0)
        rate = res.bytes_sent / res.transfer_s / (1 << 20)
        print(f"\npush-bundle {artifact.manifest.total_size / (1 << 20):.1f} MiB in "
              f"{res.chunks_sent} chunks of {DEFAULT_CHUNK_SIZE // 1024} KiB "
              f"(device {device_rate:.0f}/s, controller {controller_rate:.0f}/s): "
              f"{res.transfer_s:.1f} s, {rate:.2f} MiB/s, {res.resent} resent")
        assert res.status == "FAILED" and "rolled back to first" in res.detail, res
        assert os.readlink(link) == "first"
        assert daemon.terminate() == 0
    finally:
        daemon.kill()

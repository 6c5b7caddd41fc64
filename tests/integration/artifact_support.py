"""Helpers for the artifact push tests: a real daemon on a real broker, a real controller."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.controller.client import BrokerOptions, FleetClient
from agent.controller.push import PushOptions, PushResult, _Transfer, push_one
from agent.controller.push_manifest import Artifact, build_artifact
from agent.core.topics import DeviceTopics
from agent.io.adapter_fs import AdapterValidator
from agent.io.registry import AdapterRegistry
from tests.integration.conftest import FAST
from tests.integration.daemon_support import DaemonProcess, FakeDevice, base_config, write_config
from tests.io.tiny_bundle import make_adapter, make_bundle

DEVICE = "dev1"
# no run starts: these tests are about pushes only
NO_RUNS = {"min_new_examples": 100_000}


@dataclass
class PushRig:
    """A daemon (its config, state) on a fleet, and how to reach it."""

    tmp: Path
    bundle: Path
    state: Path
    config: Path
    broker: Any
    fleet: str

    @property
    def topics(self) -> DeviceTopics:
        return DeviceTopics.for_device(self.fleet, DEVICE)

    def start(self, sub: Any, log: str = "daemon.log") -> DaemonProcess:
        daemon = DaemonProcess(self.config, self.state, self.tmp / log)
        sub.wait_json(self.topics.available, lambda d: d["status"] == "online", 60)
        return daemon

    def client(self) -> FleetClient:
        return FleetClient(BrokerOptions(host=self.broker.host, port=self.broker.port,
                                         fleet=self.fleet))

    def registry(self) -> AdapterRegistry:
        return AdapterRegistry(self.state / "adapters", validator=AdapterValidator(self.bundle))

    def journal(self) -> dict[str, Any]:
        return json.loads((self.state / "artifacts" / "journal.json").read_text())

    def adapter(self, value: float, chunk_size: int = 1024) -> Artifact:
        out = make_adapter(self.bundle, self.tmp / f"adapter-{value}", value)
        bundle_id = AdapterValidator(self.bundle).bundle_id
        return build_artifact(out, "adapter", chunk_size, bundle_id)

    def push(self, artifact: Artifact, **opts: Any) -> PushResult:
        with self.client() as fc:
            return push_one(fc, DEVICE, artifact, PushOptions(**opts))


def tiny_bundle(root: Path, seed: int = 0) -> Path:
    """The tiny bundle (no program runs), readable by the daemon: a bundle without a shared
    weights file is format 3."""
    make_bundle(root, seed=seed)
    (root / "tokenizer" / "placeholder.txt").write_text("a push carries files, not empty folders\n")
    doc = json.loads((root / "manifest.json").read_text())
    if doc.get("weights") is None and doc.get("format_version") != 3:
        doc["format_version"] = 3
        (root / "manifest.json").write_text(json.dumps(doc, indent=2))
    return root


def rig(tmp_path: Path, bundle: Path, broker: Any, fleet: str, *, state: Path | None = None,
        url: str = "http://127.0.0.1:9", **changes: dict[str, Any]) -> PushRig:
    device = FakeDevice(tmp_path / "device")
    state = state or tmp_path / "state"
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port, "fleet": fleet,
            "device_id": DEVICE, **FAST, **changes.pop("mqtt", {})}
    sections = base_config(tmp_path, device, bundle, url=url, mqtt=mqtt,
                           paths={"state_dir": str(state)}, constraints=NO_RUNS, **changes)
    config = write_config(tmp_path / "agent.toml", sections)
    return PushRig(tmp_path, bundle, state, config, broker, fleet)


def send_some_chunks(rig: PushRig, artifact: Artifact, indices: list[int],
                     transfer_timeout_s: float = 600.0, **opts: Any) -> str:
    """Open a push and send only ``indices``; returns its job id (the job waits for more)."""
    with rig.client() as fc:
        t = _Transfer(fc, DEVICE, artifact, PushOptions(**opts))
        m = artifact.manifest
        reply = t.ask(f"push-{m.kind}", {"manifest": m.model_dump(mode="json"),
                                         "transfer_timeout_s": transfer_timeout_s}, job_id=t.job_id)
        assert reply.ok, reply
        deadline = time.monotonic() + 30
        while True:
            status = t.ask("artifact-status", {"artifact_id": m.artifact_id})
            if (status.result or {}).get("state") == "receiving":
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        for index in indices:
            answer = t.ask("artifact-chunk", {"artifact_id": m.artifact_id, "index": index,
                                              "data": base64.b64encode(
                                                  artifact.chunk(index)).decode()})
            assert answer.ok and (answer.result or {})["stored"], answer
        return t.job_id

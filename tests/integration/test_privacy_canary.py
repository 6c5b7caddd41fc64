"""Privacy canary (issue 17): the user's text stays on the device.

Unique canary words go in through the local API (a completion, a chat, a correction); a real
inference service records them, a real daemon trains on them and talks to a real mosquitto.
The canaries must never appear in any MQTT payload (state, telemetry, command replies, job
progress: everything under ``#``), in any log line (the daemon runs at INFO; the service,
trainer and evaluator logs too), and neither process may dump core (``RLIMIT_CORE`` 0, set by
the processes themselves as the units' ``LimitCORE=0`` does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.core.topics import DeviceTopics
from tests.integration.conftest import FAST
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    ServiceProcess,
    base_config,
    seed_store,
    write_config,
)

pytestmark = [pytest.mark.runtime, pytest.mark.broker]

ENDED = ("published", "rejected", "failed", "rolled_back")


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError(f"no core limit for pid {pid}")


def test_user_text_never_leaves_through_mqtt_logs_or_core_dumps(
    tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Callable[..., Any],
    fleet: str
) -> None:
    tag = uuid.uuid4().hex[:10]
    canaries = [f"zebraprompt{tag}", f"zebrachat{tag}", f"zebrafix{tag}"]
    device = FakeDevice(tmp_path / "device")
    device.plug(False)  # the canaries go in first; the burst trains on them afterwards
    state = tmp_path / "state"
    seed_store(state, n=24)
    everything = sub_factory("#")  # every payload the broker routes while the test runs
    service = ServiceProcess(starter_bundle, state, tmp_path / "service.log")
    daemon = None
    try:
        client = service.client()
        reply = client.complete(f"please remember {canaries[0]}", max_tokens=2)
        assert reply.status == 200, reply.json
        chat = client.chat(f"my secret is {canaries[1]}", max_tokens=2)
        assert chat.status == 200, chat.json
        fixed = client.post("/v1/feedback", {"id": chat.json["id"], "rating": "down",
                                             "correction": f"say {canaries[2]} instead"})
        assert fixed.status == 200, fixed.json

        mqtt = {"enabled": True, "host": broker.host, "port": broker.port, "fleet": fleet,
                "device_id": "canary", **FAST, "telemetry_interval_s": 0.5,
                "state_interval_s": 1.0}
        cfg = write_config(tmp_path / "agent.toml", base_config(
            tmp_path, device, starter_bundle, url=service.url, mqtt=mqtt,
            constraints={"min_new_examples": 1}, training={"steps_per_burst": 2}))
        daemon = DaemonProcess(cfg, state, tmp_path / "daemon.log")
        daemon.wait_socket()
        device.plug(True)
        done = daemon.wait_status(
            lambda s: (s.get("last_burst") or {}).get("outcome") in ENDED, 180, "the run end")
        assert done["last_burst"]["outcome"] in ("published", "rejected"), done["last_burst"]
        topics = DeviceTopics.for_device(fleet, "canary")
        replies = sub_factory(topics.cmd_result("canary-status"))
        replies.publish(topics.cmd("status"), json.dumps({"request_id": "canary-status"}))
        assert replies.wait(lambda m: bool(m.payload), 20)
        time.sleep(1.5)  # a few more state and telemetry messages

        # no core dumps: the limit is 0 in both processes (and so in their children)
        for pid in (daemon.pid, service.proc.pid):
            assert _core_limit(pid) == "0 0", (pid, _core_limit(pid))
        assert daemon.terminate() == 0
        service.stop()

        payloads = [m.payload for m in everything.drain(2.0)]
        assert len(payloads) > 5, "the broker saw (almost) nothing: the test proves nothing"
        logs = {p.name: p.read_text(errors="replace")
                for p in [tmp_path / "daemon.log", tmp_path / "service.log",
                          *state.rglob("*.log")] if p.exists()}
        assert "daemon.log" in logs and "service.log" in logs
        for word in canaries:
            leaked = [p[:200] for p in payloads if word.encode() in p]
            assert not leaked, (word, leaked)
            in_logs = [name for name, text in logs.items() if word in text]
            assert not in_logs, (word, in_logs)
        # the canaries did reach the store and the training data (they were not just lost)
        db = (state / "interactions.sqlite3").read_bytes() + b"".join(
            p.read_bytes() for p in state.glob("interactions.sqlite3-wal"))
        assert canaries[0].encode() in db or canaries[2].encode() in db
    finally:
        if daemon is not None:
            daemon.kill()
        service.stop()

"""``mobizo-fleet`` over many devices: ``cmd --all`` / a device list, ``cancel``, and the
acknowledgement that clears a finished job's retained message. Real mosquitto, real links."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.controller.cli import main as fleet_main
from agent.core.topics import DeviceTopics
from tests.integration.conftest import REPO, Sub, mqtt_config

pytestmark = pytest.mark.broker


def _base(broker, fleet) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet]


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = fleet_main(list(argv))
    captured = capsys.readouterr()
    print(argv, code, captured.out, captured.err, file=sys.stderr)  # shown when a test fails
    return code, captured.out


def _rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["DEVICE", "RESULT", "JOB", "DETAIL"]
    return {ln.split()[0]: ln.split(maxsplit=3) for ln in lines[1:]}


def _retained(broker, topic: str) -> list[bytes]:
    sub = Sub(broker, topic)
    try:
        return [m.payload for m in sub.drain(0.5) if m.payload]
    finally:
        sub.close()


def test_cmd_all_reports_each_device_and_an_offline_one(broker, fleet, link_factory, capsys):
    config = mqtt_config(broker, fleet, session_expiry_s=0)
    link_factory(config, "dev1")
    link_factory(config, "dev2")
    gone, _ = link_factory(config, "dev3")
    gone.stop()  # retained "stopped": seen by --all, and it cannot answer
    started = time.monotonic()
    code, out = _run(capsys, *_base(broker, fleet), "cmd", "--all", "train-now", "max_steps=2",
                     "--timeout", "2", "--job-id", "wave-1")
    rows = _rows(out)
    assert code == 3  # the only failure is a device that did not answer
    assert rows["dev1"][1:3] == ["SUCCEEDED", "wave-1"]
    assert rows["dev2"][1:3] == ["SUCCEEDED", "wave-1"]
    assert rows["dev3"][1] == "NO" and "its link is stopped" in rows["dev3"][3]
    assert time.monotonic() - started < 10
    # the finished jobs were acknowledged: nothing retained is left behind
    for device in ("dev1", "dev2"):
        assert _retained(broker, DeviceTopics.for_device(fleet, device).job("wave-1")) == []
    # a device list, every one failing: exit 1, JSON on request
    code, out = _run(capsys, *_base(broker, fleet), "cmd", "dev1,dev2", "rollback",
                     "version=42", "--json")
    doc = json.loads(out)
    assert code == 1 and [d["device"] for d in doc] == ["dev1", "dev2"]
    assert all(d["status"] == "FAILED" and "does not exist" in d["detail"] for d in doc)
    # short commands too, one row each
    code, out = _run(capsys, *_base(broker, fleet), "cmd", "dev1,dev2", "pause")
    assert code == 0 and {r[1] for r in _rows(out).values()} == {"OK"}


def test_cmd_all_usage_errors(broker, fleet, capsys):
    assert _run(capsys, *_base(broker, fleet), "cmd", "--all")[0] == 2
    assert _run(capsys, *_base(broker, fleet), "cmd", "dev/1,dev2", "status")[0] == 2
    assert _run(capsys, *_base(broker, fleet), "cancel", "dev1")[0] == 2
    code, _ = _run(capsys, *_base(broker, fleet), "cmd", "--all", "status", "--wait", "0.2")
    assert code == 1  # no device seen in this fleet: nothing sent, and it says so


def test_cancel_from_the_command_line(broker, fleet, link_factory, capsys):
    link, device = link_factory(mqtt_config(broker, fleet), step_s=0.05)
    base = _base(broker, fleet)
    # a long train-now from another invocation (the installed script), followed to its end...
    exe = Path(sys.executable).with_name("mobizo-fleet")
    runner = subprocess.Popen(
        [str(exe), *base, "cmd", "dev1", "train-now", "max_steps=400", "--job-id", "long"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while device.state != "training" and time.monotonic() < deadline:
            time.sleep(0.02)
        # ...canceled from here: it stops at its next step, and both invocations say so
        code, out = _run(capsys, *base, "cancel", "dev1", "long")
        followed, _ = runner.communicate(timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert code == 0 and _rows(out)["dev1"][1:3] == ["CANCELED", "long"]
    assert runner.returncode == 1  # the job did not succeed
    assert json.loads(followed)["job"]["status"] == "CANCELED"
    code, out = _run(capsys, *base, "cancel", "dev1", "long")
    assert code == 1 and "already CANCELED" in _rows(out)["dev1"][3]
    assert _retained(broker, DeviceTopics.for_device(fleet, "dev1").job("long")) == []

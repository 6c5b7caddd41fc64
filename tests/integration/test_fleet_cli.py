"""``mobizo-fleet`` end to end against a real broker and a running fleet link."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.controller.cli import main as fleet_main
from tests.integration.conftest import REPO, mqtt_config

pytestmark = pytest.mark.broker


def _base(broker, fleet) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet]


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = fleet_main(list(argv))
    captured = capsys.readouterr()
    print(argv, code, captured.err, file=sys.stderr)  # shown when a test fails
    return code, captured.out


def test_devices_and_status(broker, fleet, link_factory, capsys):
    link_factory(mqtt_config(broker, fleet), "dev1")
    link_factory(mqtt_config(broker, fleet), "dev2")
    code, out = _run(capsys, *_base(broker, fleet), "devices", "--wait", "0.5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "AVAILABLE", "STATE"]
    assert [ln.split()[:4] for ln in lines[1:]] == [
        ["dev1", "online", "idle", "1"],
        ["dev2", "online", "idle", "1"],
    ]
    code, out = _run(capsys, *_base(broker, fleet), "devices", "--json", "--wait", "0.5")
    assert [d["device_id"] for d in json.loads(out)] == ["dev1", "dev2"]
    code, out = _run(capsys, *_base(broker, fleet), "status", "dev2", "--wait", "0.5")
    doc = json.loads(out)
    assert code == 0 and doc["online"] and doc["state"]["store_counts"] == {"interactions": 100}
    code, _ = _run(capsys, *_base(broker, fleet), "status", "nobody", "--wait", "0.3")
    assert code == 1


def test_every_command_from_mobizo_fleet(broker, fleet, link_factory, capsys):
    link, device = link_factory(mqtt_config(broker, fleet))
    base = [*_base(broker, fleet), "cmd", "dev1"]
    code, out = _run(capsys, *base, "status")
    assert code == 0 and json.loads(out)["result"]["state"] == "idle"
    code, out = _run(capsys, *base, "pause", "reason=upgrade window")
    assert code == 0 and device.reason == "upgrade window"
    code, out = _run(capsys, *base, "train-now", "max_steps=3")
    assert code == 1  # paused: the job is REJECTED, and the exit code says so
    assert json.loads(out)["job"]["status"] == "REJECTED"
    assert _run(capsys, *base, "resume")[0] == 0
    code, out = _run(capsys, *base, "train-now", '{"max_steps": 4}')
    job = json.loads(out)["job"]
    assert code == 0 and job["status"] == "SUCCEEDED" and job["result"]["steps"] == 4
    code, out = _run(capsys, *base, "rollback", "version=1")
    assert code == 0 and json.loads(out)["job"]["result"] == {"active_version": 1}
    code, out = _run(capsys, *base, "rollback", "version=42")
    assert code == 1 and "does not exist" in json.loads(out)["job"]["error"]["message"]
    code, out = _run(capsys, *base, "purge-data", "before=2020-01-01T00:00:00Z")
    assert code == 0 and json.loads(out)["job"]["result"] == {"deleted": 50}
    code, out = _run(capsys, *base, "set-log-level", "level=warning")
    assert code == 0 and device.log_level == "WARNING"
    code, out = _run(capsys, *base, "set-log-level", "level=chatty")
    assert code == 1 and json.loads(out)["error"]["code"] == "bad_request"
    code, out = _run(capsys, *base, "launch", "--force")
    assert code == 1 and json.loads(out)["error"]["code"] == "unknown_command"
    assert _run(capsys, *base, "launch")[0] == 2
    # Idempotent job ids from the CLI too.
    code, out = _run(capsys, *base, "purge-data", "--job-id", "purge-1")
    code, out = _run(capsys, *base, "purge-data", "--job-id", "purge-1")
    assert json.loads(out)["duplicate"] is True
    calls = [
        json.loads(x)["call"] for x in (device.state_dir / "calls.jsonl").read_text().splitlines()
    ]
    assert calls.count("purge_data") == 2


def test_cmd_over_mqtt311_and_timeouts(broker, fleet, link_factory, capsys):
    link_factory(mqtt_config(broker, fleet))
    code, out = _run(capsys, *_base(broker, fleet), "--protocol", "3.1.1", "cmd", "dev1", "status")
    assert code == 0 and json.loads(out)["ok"]
    started = time.monotonic()
    code, _ = _run(capsys, *_base(broker, fleet), "cmd", "ghost", "status", "--timeout", "0.5")
    assert code == 3 and time.monotonic() - started < 5


def test_config_command(broker, fleet, link_factory, capsys, tmp_path: Path):
    _, device = link_factory(mqtt_config(broker, fleet))
    good = tmp_path / "good.toml"
    good.write_text("max_steps = 20\nlr = 0.0005\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_steps": "lots"}))
    code, out = _run(capsys, *_base(broker, fleet), "config", "dev1", str(good))
    assert code == 0 and json.loads(out)["version"] == 1
    assert device.overrides == {"max_steps": 20, "lr": 0.0005}
    code, out = _run(capsys, *_base(broker, fleet), "config", "dev1", str(bad))
    rep = json.loads(out)
    assert code == 1 and rep["rejected_version"] == 2 and rep["version"] == 1
    code, out = _run(capsys, *_base(broker, fleet), "config", "dev1", str(good))
    assert code == 0 and json.loads(out)["version"] == 3
    # Clear the retained desired document (test hygiene on the shared broker).
    from agent.core.topics import DeviceTopics
    from tests.integration.conftest import Sub

    s = Sub(broker)
    s.publish(DeviceTopics.for_device(fleet, "dev1").config_desired, b"", retain=True)
    s.close()


def test_watch_count_duration_and_ctrl_c(broker, fleet, link_factory, capsys):
    link_factory(mqtt_config(broker, fleet))
    code, out = _run(capsys, *_base(broker, fleet), "watch", "--count", "2")
    # Not a terminal: a header, then one plain line per change, no escape codes.
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:6] == ["DEVICE", "LINK", "STATE", "ADAPTER", "LOSS",
                                                   "TEMP"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["dev1", "online"]] * 2
    assert "\x1b" not in out
    started = time.monotonic()
    assert _run(capsys, *_base(broker, fleet), "watch", "--duration", "0.5")[0] == 0
    assert time.monotonic() - started < 3
    # The installed console script, interrupted like a user's Ctrl-C.
    exe = Path(sys.executable).with_name("mobizo-fleet")
    proc = subprocess.Popen(
        [str(exe), *_base(broker, fleet), "watch"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the first table line: it is up and watching
        assert line.startswith("DEVICE")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

"""What anyone allowed on the broker can no longer do to a device (issue 17, docs/security.md).

Real mosquitto, real fleet link; the daemon behind it is the simulator, except for desired
config, which goes through the real fleet policy over a real config (:class:`ConfigSink`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import LoadedConfig, load_config
from agent.config.overrides import OverridesRefused, fleet_overrides, save_fleet_overrides
from agent.controller.cli import main as fleet_main
from agent.controller.simulator import SimDevice
from agent.core.fleet_documents import ApplyResult
from agent.core.topics import DeviceTopics, FleetTopics
from agent.errors import MobizoError
from agent.io.fleet_store import FleetStore
from tests.integration.conftest import mqtt_config, wait_online

pytestmark = pytest.mark.broker


class ConfigSink(SimDevice):
    """The simulator with the daemon's desired-config path: the real fleet policy over a real
    config (a Raspberry Pi 5 board profile), applied, then saved (FleetCommands.apply)."""

    def __init__(self, state_dir: Path, *, step_s: float = 0.01) -> None:
        super().__init__(state_dir, step_s=step_s)
        toml = state_dir / "agent.toml"
        if not toml.exists():
            toml.write_text(f'[device]\nprofile = "raspberry-pi-5"\n'
                            f'[paths]\nstate_dir = "{state_dir / "state"}"\n')
        self.loaded: LoadedConfig = load_config(toml, replay_overrides=True)

    def apply(self, version: int, document: dict[str, Any]) -> ApplyResult:
        self._record("apply", version=version)
        try:
            new = fleet_overrides(self.loaded, document)
        except OverridesRefused as exc:
            return ApplyResult(errors=exc.problems)
        except MobizoError as exc:
            return ApplyResult(errors=[str(exc)])
        self.loaded = new
        save_fleet_overrides(new.config.paths.overrides_file, document, version)
        return ApplyResult(applied_version=version)

    def boot_problems(self) -> list[str]:
        return list(self.loaded.dropped_overrides)


def _ctl(fleet: str) -> str:
    return FleetTopics(fleet).controller_reply(f"ctl-{uuid.uuid4().hex[:8]}")


def _request(sub, topic: str, payload: bytes, reply: str | None = None, **kw: Any) -> None:
    props = None
    if reply is not None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply
        props.CorrelationData = b"c"
    sub.publish(topic, payload, properties=props, **kw)


def _calls(device: SimDevice) -> list[str]:
    path = device.state_dir / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["call"] for x in path.read_text().splitlines()]


def test_each_forbidden_desired_key_is_refused_by_name(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet), device_cls=ConfigSink)
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.config_reported)
    overrides = device.loaded.config.paths.overrides_file
    attacks = {
        "device.sysfs_root": {"device": {"sysfs_root": "/tmp/none"}},
        "constraints.min_available_memory_mb": {
            "constraints": {"min_available_memory_mb": 0, "stop_available_memory_mb": 0},
            "training": {"memory_max_mb": 0},
        },
        "paths.state_dir": {"paths": {"state_dir": "/tmp/elsewhere"}},
        "mqtt.host": {"mqtt": {"host": "evil.example", "password_file": "/etc/shadow"}},
        "service.bundle_dir": {"service": {"bundle_dir": "/tmp/b"}},
        "inference.threads": {"inference": {"threads": 1}},
        "daemon.eval_timeout_s": {"daemon": {"eval_timeout_s": 1.0}},
        "data.store_path": {"data": {"store_path": "/tmp/s.sqlite3"}},
        "adapters.registry_dir": {"adapters": {"registry_dir": "/tmp/a"}},
        "constraints.thermal_zones": {"constraints": {"thermal_zones": ["none"]}},
        "constraints.thermal_stop_c": {"constraints": {"thermal_stop_c": 95.0}},
    }
    for version, (key, config) in enumerate(attacks.items(), start=1):
        doc = {"version": version, "config": {"training": {"lr": 0.001}, **config}}
        sub.publish(t.config_desired, json.dumps(doc), retain=True)
        rep = sub.wait_json(t.config_reported, lambda d, v=version: d["rejected_version"] == v)
        assert rep["status"] == "rejected" and rep["version"] is None, rep
        assert any(e.startswith(key + ":") for e in rep["errors"]), (key, rep["errors"])
        assert not overrides.exists()  # nothing refused is ever saved
    ok = {"version": 50, "config": {"training": {"lr": 0.001},
                                    "constraints": {"min_available_memory_mb": 4096}}}
    sub.publish(t.config_desired, json.dumps(ok), retain=True)
    assert sub.wait_json(t.config_reported, lambda d: d["version"] == 50)["status"] == "applied"
    saved = json.loads(overrides.read_text())
    assert saved["version"] == 50 and set(saved["overrides"]) == {"training", "constraints"}
    sub.publish(t.config_desired, b"", retain=True)


def test_huge_version_then_normal_one_and_config_reset(
    broker, fleet, link_factory, sub_factory, tmp_path, capsys
):
    sd = tmp_path / "dev1"
    sd.mkdir()
    # What an older agent kept after applying version 10**30: it must not block anything.
    store = FleetStore(sd / "fleet.db")
    store.put("config_applied_version", str(10**30))
    store.close()
    link, device = link_factory(mqtt_config(broker, fleet), state_dir=sd)
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.config_reported)
    sub.publish(t.config_desired, json.dumps({"version": 10**30, "config": {"lr": 0.1}}))
    rep = sub.wait_json(t.config_reported, lambda d: d["status"] == "rejected")
    assert any(e.startswith("version:") for e in rep["errors"]), rep
    sub.publish(t.config_desired, json.dumps({"version": 5, "config": {"lr": 0.2}}), retain=True)
    assert sub.wait_json(t.config_reported, lambda d: d["version"] == 5)["status"] == "applied"
    assert device.overrides == {"lr": 0.2}

    base = ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet]
    (tmp_path / "o.json").write_text(json.dumps({"lr": 0.3}))
    # Stale after 5: reported, not applied; the controller resets the sequence.
    assert fleet_main([*base, "config", "dev1", str(tmp_path / "o.json"), "--version", "2"]) == 1
    assert "stale" in capsys.readouterr().out
    assert fleet_main([*base, "config", "reset", "dev1", str(tmp_path / "o.json")]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 0 and device.overrides == {"lr": 0.3}
    (tmp_path / "p.json").write_text(json.dumps({"lr": 0.4}))
    assert fleet_main([*base, "config", "dev1", str(tmp_path / "p.json")]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1 and device.overrides == {"lr": 0.4}
    sub.publish(t.config_desired, b"", retain=True)


def test_retained_commands_never_run_over_three_reconnects(
    restartable_broker, fleet, link_factory, sub_factory
):
    broker = restartable_broker
    config = mqtt_config(broker, fleet)
    link, device = link_factory(config)
    t = DeviceTopics.for_device(fleet, "dev1")
    names = {"pause": "r-pause", "purge-data": "r-purge", "rollback": "r-roll"}
    sub = sub_factory(t.cmd_result("+"), on=broker)
    for name, rid in names.items():
        sub.publish(t.cmd(name), json.dumps({"request_id": rid}), retain=True)
    for rid in names.values():  # refused even live (subscribed "retain as published")
        reply = sub.wait_json(t.cmd_result(rid))
        assert reply["error"]["code"] == "rejected" and "retained" in reply["error"]["message"]
    for _ in range(3):
        seq, replies = link.session_seq, link.inbound.replies_sent
        broker.restart()
        wait_online(config, "dev1", min_seq=seq)
        deadline = time.monotonic() + 10
        # Each retained command comes back on the new connection and is refused again.
        while link.inbound.replies_sent < replies + len(names):
            assert time.monotonic() < deadline, link.inbound.replies_sent - replies
            time.sleep(0.02)
    assert _calls(device) == []  # neither paused, purged nor rolled back, ever
    assert device.state == "idle" and device.interactions == 100
    sub = sub_factory(on=broker)
    for name in names:
        sub.publish(t.cmd(name), b"", retain=True)


def test_reply_topic_at_another_device_is_refused(broker, fleet, link_factory, sub_factory):
    link1, dev1 = link_factory(mqtt_config(broker, fleet), "dev1")
    link2, dev2 = link_factory(mqtt_config(broker, fleet), "dev2")
    t1, t2 = DeviceTopics.for_device(fleet, "dev1"), DeviceTopics.for_device(fleet, "dev2")
    sub = sub_factory(t1.cmd_result("+"), t2.prefix + "/cmd/#")
    body = {"request_id": "r-x", "reply_to": t2.cmd("purge-data")}
    sub.publish(t1.cmd("pause"), json.dumps(body))
    reply = sub.wait_json(t1.cmd_result("r-x"))
    assert reply["error"]["code"] == "bad_request" and "not run" in reply["error"]["message"]
    # The same through the MQTT 5 response topic.
    _request(sub, t1.cmd("pause"), json.dumps({"request_id": "r-y"}).encode(),
             reply=t2.cmd("rollback"))
    assert sub.wait_json(t1.cmd_result("r-y"))["error"]["code"] == "bad_request"
    seen = [m.topic for m in sub.drain(0.5)]
    assert not [tp for tp in seen if tp.startswith(t2.prefix)], seen
    assert _calls(dev1) == [] and _calls(dev2) == []


def test_60000_nested_brackets(broker, fleet, link_factory, sub_factory):
    # Under the payload limit, so the depth bound is what is tested.
    link, device = link_factory(mqtt_config(broker, fleet, command_max_payload_bytes=1 << 20))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply, t.config_reported)
    deep = b"[" * 60_000 + b"]" * 60_000
    _request(sub, t.cmd("status"), b'{"request_id": "d", "args": {"x": ' + deep + b"}}", reply)
    result = sub.wait_json(reply)
    assert result["error"]["code"] == "bad_request" and "deeper" in result["error"]["message"]
    sub.publish(t.config_desired, b'{"version": 1, "config": {"x": ' + deep + b"}}")
    rep = sub.wait_json(t.config_reported, lambda d: d["status"] == "rejected")
    assert "deeper" in rep["errors"][0]
    _request(sub, t.cmd("status"), b"{}", reply)
    assert sub.wait_json(reply)["ok"]  # the link keeps serving


def test_50_mib_payload_is_dropped_unread(broker, fleet, link_factory, sub_factory):
    # The broker forwards it (no size limit; the link announces a large maximum packet size),
    # so what is tested is the link's own limit.
    link, device = link_factory(mqtt_config(broker, fleet, max_packet_bytes=200 * 1024 * 1024))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    _request(sub, t.cmd("status"), b"{" + b" " * (50 * 1024 * 1024) + b"}", reply)
    result = sub.wait_json(reply, timeout=30)
    assert result["error"]["code"] == "payload_too_large", result
    assert "52428802 bytes" in result["error"]["message"]
    assert link.transport.dropped_oversize == 1
    _request(sub, t.cmd("status"), b"{}", reply)
    assert sub.wait_json(reply)["ok"]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _BusyStatus(SimDevice):
    def status(self):  # holds the worker while the flood arrives
        time.sleep(4.0)
        return super().status()


def test_flood_while_the_worker_is_busy_stays_bounded(broker, fleet, link_factory, sub_factory):
    import shutil
    import subprocess
    import threading

    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto-clients not installed")
    cap = 2 * 1024 * 1024
    config = mqtt_config(broker, fleet, inbox_max_bytes=cap, inbound_rate_per_s=100_000.0,
                         inbound_burst=1_000_000)
    link, device = link_factory(config, device_cls=_BusyStatus)
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    _request(sub, t.cmd("status"), b"{}", reply)  # the worker is now busy for 4 s
    line = b'{"args": {"x": "' + b"x" * 60_000 + b'"}}\n'
    before, peak, held = _rss_kb(), [0], [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb())
            held[0] = max(held[0], link._inbox.bytes_held)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    pubs = [
        subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "0",
                          "-t", t.cmd(f"flood{k}"), "-l"], stdin=subprocess.PIPE)
        for k in range(4)
    ]
    for p in pubs:  # 4 x 400 x 60 KB = 96 MB at a busy worker
        assert p.stdin is not None
        p.stdin.write(line * 400)
        p.stdin.close()
    for p in pubs:
        p.wait(30)
    time.sleep(0.5)
    stop.set()
    sampler.join()
    assert held[0] <= cap, held
    assert link.transport.dropped > 1000, link.transport.dropped
    assert peak[0] - before < 64 * 1024, (before, peak)  # KiB: well under the 96 MB sent
    assert sub.wait_json(reply, timeout=10)["ok"]  # the slow status, then the link serves on
    _request(sub, t.cmd("status"), json.dumps({"request_id": "after"}).encode(), reply)
    assert sub.wait_json(reply, lambda d: d["request_id"] == "after", timeout=15)["ok"]


def test_per_topic_rate_limit(broker, fleet, link_factory, sub_factory):
    link, device = link_factory(mqtt_config(broker, fleet, inbound_rate_per_s=5.0,
                                            inbound_burst=20))
    t = DeviceTopics.for_device(fleet, "dev1")
    reply = _ctl(fleet)
    sub = sub_factory(reply)
    infos = []
    for _ in range(300):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply
        infos.append(sub.client.publish(t.cmd("status"), b"{}", qos=1, properties=props))
    for info in infos:
        info.wait_for_publish(10)
    answered = len(sub.drain(2.0))
    assert 20 <= answered < 60, answered  # the burst, plus ~5/s while they arrived
    assert link.transport.rate is not None and link.transport.rate.dropped > 200
    time.sleep(0.5)
    _request(sub, t.cmd("status"), b"{}", reply)
    assert sub.wait_json(reply)["ok"]  # the bucket refills: the topic is not shut for good


def test_fleet_db_locked_during_reconnect(restartable_broker, fleet, link_factory, sub_factory):
    broker = restartable_broker
    config = mqtt_config(broker, fleet)
    link, device = link_factory(config)
    t = DeviceTopics.for_device(fleet, "dev1")
    seq = link.session_seq
    locker = sqlite3.connect(str(device.state_dir / "fleet.db"), timeout=0.1,
                             isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds fleet.db
    try:
        broker.restart()
        birth = wait_online(config, "dev1", timeout=30, min_seq=seq)
        assert birth["session_seq"] > seq
        reply = _ctl(fleet)
        sub = sub_factory(reply, on=broker)
        _request(sub, t.cmd("pause"), b"{}", reply)
        assert sub.wait_json(reply, timeout=15)["ok"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    seq = link.session_seq
    broker.restart()  # and with the lock gone, the sequence persists again
    assert wait_online(config, "dev1", timeout=30, min_seq=seq)["session_seq"] > seq


def test_boot_without_bad_saved_overrides_reports_why(broker, fleet, link_factory, sub_factory,
                                                      tmp_path):
    from agent.config import write_overrides

    sd = tmp_path / "dev1"
    sd.mkdir()
    # Saved by an older agent from one retained desired config (issue 17).
    write_overrides(sd / "state" / "overrides.json",
                    {"device": {"sysfs_root": "/tmp/none"}, "paths": {"state_dir": "/x"}},
                    version=7)
    store = FleetStore(sd / "fleet.db")
    store.put("config_applied_version", "7")
    store.close()
    t = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(t.config_reported)
    link, device = link_factory(mqtt_config(broker, fleet), state_dir=sd, device_cls=ConfigSink)
    rep = sub.wait_json(t.config_reported, lambda d: d["rejected_version"] == 7)
    assert rep["version"] is None and "device.sysfs_root" in rep["errors"][0]
    assert device.loaded.config.device.sysfs_root == Path("/")
    # The controller's next desired config applies (the sequence was forgotten with them).
    sub.publish(t.config_desired, json.dumps({"version": 7, "config": {}}))
    assert sub.wait_json(t.config_reported, lambda d: d["version"] == 7)["status"] == "applied"

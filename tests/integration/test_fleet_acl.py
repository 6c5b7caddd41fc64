"""The shipped mosquitto ACL (docs/mosquitto/acl.example) with a password file: each device
only on its own topics, the controller on commands and config, strangers on nothing."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.controller.cli import main as fleet_main
from agent.core.topics import DeviceTopics
from tests.fleet_broker import LocalBroker, mosquitto_path
from tests.integration.conftest import FAST, REPO, mqtt_config

pytestmark = pytest.mark.broker

USERS = {"dev1": "pw-dev1", "dev2": "pw-dev2", "mobizo-fleet": "pw-ctl", "stranger": "pw-x"}


@pytest.fixture()
def fleet() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def acl_broker(tmp_path: Path, fleet: str):
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    example = (REPO / "docs" / "mosquitto" / "acl.example").read_text()
    acl = tmp_path / "mobizo.acl"
    acl.write_text(example.replace("/default/", f"/{fleet}/"))  # as the example says to
    broker = LocalBroker(tmp_path / "mosq", users=USERS, acl_file=acl)
    broker.start()
    yield broker
    broker.stop()


class Client:
    """A plain MQTT 5 client logged in as one broker user."""

    def __init__(self, broker: LocalBroker, user: str, *filters: str) -> None:
        self.got: list[paho.MQTTMessage] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4()}",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        ready = threading.Event()
        self.client.on_message = lambda c, u, m: self.got.append(m)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(5), "no CONNACK"
        if filters:
            ready.clear()
            self.client.subscribe([(f, 1) for f in filters])
            assert ready.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _device_config(broker: LocalBroker, fleet: str, tmp_path: Path, user: str):
    pw = tmp_path / f"{user}.pw"
    pw.write_text(USERS[user] + "\n")
    return mqtt_config(broker, fleet, username=user, password_file=str(pw))


def test_agent_under_the_shipped_acl(acl_broker, fleet, tmp_path, link_factory, capsys):
    import time

    broker = acl_broker
    t1 = DeviceTopics.for_device(fleet, "dev1")
    births = Client(broker, "mobizo-fleet", f"mobizo/v1/{fleet}/+/available")
    link1, dev1 = link_factory(_device_config(broker, fleet, tmp_path, "dev1"), "dev1",
                               start=False)
    link2, dev2 = link_factory(_device_config(broker, fleet, tmp_path, "dev2"), "dev2",
                               start=False)
    link1.start()
    link2.start()
    try:
        deadline = time.monotonic() + 10
        while {m.topic.split("/")[3] for m in births.got
               if json.loads(m.payload)["status"] == "online"} != {"dev1", "dev2"}:
            assert time.monotonic() < deadline, [m.payload for m in births.got]
            time.sleep(0.05)
        births.close()
        _under_the_acl(broker, fleet, tmp_path, t1, dev1, capsys)
        assert link1.connected and link2.connected
    finally:
        link1.stop()
        link2.stop()


def _under_the_acl(broker, fleet, tmp_path, t1, dev1, capsys) -> None:
    import time

    ctl_pw = tmp_path / "ctl.pw"
    ctl_pw.write_text(USERS["mobizo-fleet"])
    base = ["--port", str(broker.port), "--fleet", fleet, "--username", "mobizo-fleet",
            "--password-file", str(ctl_pw)]

    # The controller commands and configures a device, and reads the fleet.
    assert fleet_main([*base, "cmd", "dev1", "status", "--timeout", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    (tmp_path / "o.json").write_text(json.dumps({"lr": 0.01}))
    assert fleet_main([*base, "config", "dev1", str(tmp_path / "o.json")]) == 0
    assert dev1.overrides == {"lr": 0.01}
    capsys.readouterr()
    assert fleet_main([*base, "devices", "--json", "--wait", "1"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["dev1", "dev2"]

    # Another device, a stranger, and dev1 itself cannot command or configure dev1, nor
    # read dev1's topics.
    watchers = [Client(broker, user, f"mobizo/v1/{fleet}/#") for user in ("dev2", "stranger")]
    for user in ("dev2", "stranger", "dev1"):
        c = Client(broker, user)
        c.publish(t1.cmd("pause"), json.dumps({"request_id": f"p-{user}"}).encode())
        c.publish(t1.cmd("purge-data"), b"{}")
        c.publish(t1.config_desired, json.dumps({"version": 99, "config": {"lr": 0.5}}).encode(),
                  retain=True)
        c.close()
    dev1.state = "paused"  # a state change dev1 publishes: no watcher may see it
    time.sleep(1.0)
    calls = [json.loads(x)["call"] for x in (dev1.state_dir / "calls.jsonl").read_text()
             .splitlines()]
    assert calls == ["status", "apply"] and dev1.overrides == {"lr": 0.01}
    for w in watchers:
        leaked = [m.topic for m in w.got if m.topic.startswith(t1.prefix)]
        assert leaked == [], leaked
        w.close()
    # The device's own view: its state is out, under its own prefix, for the controller.
    ctl = Client(broker, "mobizo-fleet", t1.state)
    deadline = time.monotonic() + 5
    while not any(json.loads(m.payload).get("state") == "paused" for m in ctl.got):
        assert time.monotonic() < deadline, "the controller never saw dev1's state"
        time.sleep(0.05)
    ctl.close()


def test_anonymous_is_refused(acl_broker, fleet):
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=paho.MQTTv5)
    codes: list[object] = []
    done = threading.Event()

    def on_connect(c, u, f, rc, p):
        codes.append(rc)
        done.set()

    client.on_connect = on_connect
    client.connect(acl_broker.host, acl_broker.port)
    client.loop_start()
    try:
        assert done.wait(5)
        assert codes[0].is_failure
    finally:
        client.loop_stop()


def test_password_never_goes_to_a_remote_broker_in_clear(tmp_path, link_factory):
    from agent.config.mqtt import MqttConfig

    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(ValueError, match="clear text"):
        MqttConfig.model_validate({"enabled": True, "host": "192.0.2.1", **FAST,
                                   "password_file": str(tmp_path / "pw")})


def test_another_account_cannot_resume_a_devices_session(acl_broker, fleet, tmp_path,
                                                           link_factory):
    """Persistent sessions: commands queued for an offline device never go to another
    account that presents the device's client id (mosquitto does not resume a session for a
    different user name); the device loses them then, which is the takeover docs/security.md
    names."""
    import time

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    config = _device_config(acl_broker, fleet, tmp_path, "dev1")
    pause = DeviceTopics.for_device(fleet, "dev1").cmd("pause")

    def away_while_queued(request_id: str) -> None:
        link, _ = link_factory(config, "dev1", start=False, state_dir=tmp_path / "dev1")
        link.start()
        assert link.transport.wait_connected(10)
        time.sleep(0.3)  # subscribed (the SUBACK follows the CONNACK at once)
        link.stop()
        ctl = Client(acl_broker, "mobizo-fleet")
        ctl.publish(pause, json.dumps({"request_id": request_id}).encode())
        ctl.close()

    # The device's own identity resumes its session and gets what was queued...
    away_while_queued("r1")
    link, device = link_factory(config, "dev1", start=False, state_dir=tmp_path / "dev1")
    link.start()
    deadline = time.monotonic() + 10
    while device.state != "paused":
        assert time.monotonic() < deadline, "the queued command never reached the device"
        time.sleep(0.05)
    link.stop()
    # ...another account with the device's client id gets nothing.
    away_while_queued("r2")
    got: list[paho.MQTTMessage] = []
    thief = paho.Client(CallbackAPIVersion.VERSION2, client_id=config.resolved_client_id("dev1"),
                        protocol=paho.MQTTv5)
    thief.username_pw_set("stranger", USERS["stranger"])
    thief.on_message = lambda c, u, m: got.append(m)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    thief.connect(acl_broker.host, acl_broker.port, clean_start=False, properties=props)
    thief.loop_start()
    time.sleep(1.0)
    thief.disconnect()
    thief.loop_stop()
    assert got == []

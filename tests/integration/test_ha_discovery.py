"""Home Assistant MQTT discovery against a real mosquitto: the configs a subscriber sees, the
buttons pressed the way Home Assistant presses them, removal when the feature is turned off,
and the shipped broker ACL (docs/mosquitto/acl.example) for the device and the HA account."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.core.ha_discovery import REPLY_ID
from agent.core.topics import DeviceTopics
from agent.services.fleet.ha_discovery import ANNOUNCED_KEY, bundle_model
from tests.fleet_broker import LocalBroker, mosquitto_path
from tests.integration.conftest import REPO, mqtt_config

pytestmark = pytest.mark.broker

SENSORS = ("state", "last_loss", "adapter_version", "temperature")
BUTTONS = ("train_now", "pause", "resume")


def _ha(prefix: str, enabled: bool = True) -> dict:
    return {"home_assistant": {"enabled": enabled, "discovery_prefix": prefix}}


def _collect(sub, prefix: str, count: int, timeout: float = 5.0) -> dict[str, bytes]:
    """The last payload of each of ``count`` discovery topics under ``prefix``."""
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(got) < count:
        msg = sub.wait(lambda m: m.topic.startswith(prefix + "/"), deadline - time.monotonic())
        got[msg.topic] = msg.payload
    return got


def test_configs_announce_sensors_and_buttons_of_one_device(broker, fleet, link_factory,
                                                            sub_factory):
    prefix = f"ha-{fleet}"
    sub = sub_factory(f"{prefix}/#")
    link, _ = link_factory(mqtt_config(broker, fleet, **_ha(prefix)))
    t = DeviceTopics.for_device(fleet, "dev1")
    configs = {k: json.loads(v) for k, v in _collect(sub, prefix, 7).items()}
    assert set(configs) == {f"{prefix}/sensor/dev1/{k}/config" for k in SENSORS} | {
        f"{prefix}/button/dev1/{k}/config" for k in BUTTONS}
    for payload in configs.values():
        assert payload["device"]["identifiers"] == ["mobizo_dev1"]
        assert payload["device"]["sw_version"] == __version__
        assert payload["availability"][0]["topic"] == t.available
    temp = configs[f"{prefix}/sensor/dev1/temperature/config"]
    assert temp["state_topic"] == t.state and temp["device_class"] == "temperature"
    assert temp["unit_of_measurement"] == "°C"
    assert configs[f"{prefix}/button/dev1/pause/config"]["command_topic"] == t.cmd("pause")
    # Retained: Home Assistant starting later still finds them.
    late = sub_factory(f"{prefix}/#")
    assert len(_collect(late, prefix, 7)) == 7
    assert sorted(link.store.get_json(ANNOUNCED_KEY)) == sorted(configs)


def test_pressing_the_buttons_trains_pauses_and_resumes(broker, fleet, link_factory,
                                                        sub_factory):
    prefix = f"ha-{fleet}"
    sub = sub_factory(f"{prefix}/#")
    _, device = link_factory(mqtt_config(broker, fleet, **_ha(prefix)))
    configs = {k: json.loads(v) for k, v in _collect(sub, prefix, 7).items()}
    t = DeviceTopics.for_device(fleet, "dev1")
    replies = sub_factory(t.cmd_result(REPLY_ID), f"{t.prefix}/jobs/+")

    def press(key: str) -> None:  # what Home Assistant publishes for a press
        button = configs[f"{prefix}/button/dev1/{key}/config"]
        sub.publish(button["command_topic"], button["payload_press"], qos=button["qos"],
                    retain=button["retain"])

    press("train_now")
    job = replies.wait_json(t.cmd_result(REPLY_ID), lambda d: d["command"] == "train-now")
    assert job["ok"], job
    replies.wait(lambda m: m.topic.startswith(f"{t.prefix}/jobs/")
                 and json.loads(m.payload)["status"] == "SUCCEEDED", 10)
    press("train_now")  # a second press is a new job, not a duplicate of the first
    second = replies.wait_json(t.cmd_result(REPLY_ID), lambda d: d["command"] == "train-now")
    assert second["ok"] and not second["duplicate"] and second["job"]["job_id"] != \
        job["job"]["job_id"]
    press("pause")
    assert replies.wait_json(t.cmd_result(REPLY_ID), lambda d: d["command"] == "pause")["ok"]
    assert device.state == "paused" and device.reason == "paused from Home Assistant"
    press("resume")
    assert replies.wait_json(t.cmd_result(REPLY_ID), lambda d: d["command"] == "resume")["ok"]
    assert device.state == "idle"


def test_turning_it_off_clears_the_configs(broker, fleet, link_factory, sub_factory, tmp_path):
    prefix = f"ha-{fleet}"
    state_dir = tmp_path / "dev1"
    link, _ = link_factory(mqtt_config(broker, fleet, **_ha(prefix)), state_dir=state_dir)
    assert len(_collect(sub_factory(f"{prefix}/#"), prefix, 7)) == 7
    link.stop()  # a clean stop leaves them (the device is "unavailable", not gone)
    assert len(_collect(sub_factory(f"{prefix}/#"), prefix, 7)) == 7

    watcher = sub_factory(f"{prefix}/#")
    _collect(watcher, prefix, 7)  # the retained ones
    off, _ = link_factory(mqtt_config(broker, fleet, **_ha(prefix, enabled=False)),
                          state_dir=state_dir)  # as after a SIGHUP reload with enabled = false
    cleared = _collect(watcher, prefix, 7)
    assert set(cleared.values()) == {b""}  # an empty retained payload removes the entity
    assert sub_factory(f"{prefix}/#").drain(0.5) == []  # nothing retained is left
    assert off.store.get_json(ANNOUNCED_KEY) == []


def test_another_prefix_moves_the_configs(broker, fleet, link_factory, sub_factory, tmp_path):
    old, new = f"ha-{fleet}", f"ha2-{fleet}"
    state_dir = tmp_path / "dev1"
    link, _ = link_factory(mqtt_config(broker, fleet, **_ha(old)), state_dir=state_dir)
    _collect(sub_factory(f"{old}/#"), old, 7)
    link.stop()
    link_factory(mqtt_config(broker, fleet, **_ha(new)), state_dir=state_dir)
    assert len(_collect(sub_factory(f"{new}/#"), new, 7)) == 7
    assert sub_factory(f"{old}/#").drain(0.5) == []


def test_bundle_model_never_raises(tmp_path: Path):
    # A readable bundle's name is checked with the real daemon (test_ha_discovery_daemon.py).
    assert bundle_model(tmp_path / "nothing") == "mobizo bundle (unreadable)"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    assert bundle_model(tmp_path / "bad") == "mobizo bundle (unreadable)"


# --- the shipped ACL -------------------------------------------------------------------------

USERS = {"dev1": "pw-dev1", "dev2": "pw-dev2", "homeassistant": "pw-ha"}


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


class _Client:
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

    def wait_for(self, pred, timeout: float = 5.0) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.got):
                if pred(m):
                    return m
            time.sleep(0.05)
        raise AssertionError([m.topic for m in self.got])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_shipped_acl_lets_ha_see_and_press_only_its_buttons(acl_broker, fleet, tmp_path,
                                                                 link_factory):
    pw = tmp_path / "dev1.pw"
    pw.write_text(USERS["dev1"] + "\n")
    config = mqtt_config(acl_broker, fleet, username="dev1", password_file=str(pw),
                         **_ha("homeassistant"))
    t = DeviceTopics.for_device(fleet, "dev1")
    ha = _Client(acl_broker, "homeassistant", "homeassistant/#", t.state, t.available)
    link, device = link_factory(config, "dev1", start=False)  # the factory's wait is anonymous
    link.start()
    try:
        _press_under_the_acl(acl_broker, ha, t, device)
    finally:
        link.stop()
        ha.close()


def _press_under_the_acl(acl_broker, ha: _Client, t: DeviceTopics, device) -> None:
    pause = ha.wait_for(lambda m: m.topic == "homeassistant/button/dev1/pause/config")
    ha.wait_for(lambda m: m.topic == t.state)
    ha.wait_for(lambda m: m.topic == t.available and json.loads(m.payload)["status"] == "online")
    button = json.loads(pause.payload)
    # Another device may not announce entities for dev1, nor press its buttons.
    other = _Client(acl_broker, "dev2")
    other.client.publish("homeassistant/sensor/dev1/fake/config", b"{}", qos=1,
                         retain=True).wait_for_publish(5)
    other.client.publish(button["command_topic"], button["payload_press"],
                         qos=1).wait_for_publish(5)
    # Home Assistant may press pause, but has no write on the other commands.
    ha.client.publish(t.cmd("purge-data"), b"{}", qos=1).wait_for_publish(5)
    ha.client.publish(button["command_topic"], button["payload_press"], qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while device.state != "paused":
        assert time.monotonic() < deadline, "the pause button did nothing"
        time.sleep(0.05)
    time.sleep(0.5)
    calls = [json.loads(x)["call"] for x in (device.state_dir / "calls.jsonl").read_text()
             .splitlines()]
    assert calls == ["pause"], calls
    assert not [m for m in ha.got if m.topic.endswith("/fake/config")]
    other.close()

"""Home Assistant discovery payloads (agent/core/ha_discovery.py): topics, schema, and the
templates rendered against real state and availability documents with Jinja2, the engine
Home Assistant renders them with."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent.config.home_assistant import HomeAssistantConfig
from agent.config.mqtt import MqttConfig
from agent.core.commands import ParsedCommand, parse_command
from agent.core.fleet_documents import (
    AdapterInfo,
    Availability,
    BurstInfo,
    ConstraintsInfo,
    StateDocument,
)
from agent.core.ha_discovery import HaDevice, discovery_configs, node_id
from agent.core.topics import DeviceTopics

sandbox = pytest.importorskip("jinja2.sandbox")  # installed with torch

T = DeviceTopics.for_device("f1", "dev-1")
DEVICE = HaDevice(device_id="dev-1", name="mobizo dev-1", model="qwen (qwen2, 8da4w)",
                  sw_version="0.1.0")


def _render(template: str, document: dict) -> str:
    env = sandbox.ImmutableSandboxedEnvironment()
    env.filters["tojson"] = json.dumps
    return env.from_string(template).render(value_json=document, value=json.dumps(document))


def _configs() -> dict[str, dict]:
    return {c.topic: c.payload for c in discovery_configs("homeassistant", T, DEVICE)}


def test_topics_components_and_one_device():
    configs = _configs()
    assert sorted(configs) == sorted(
        [f"homeassistant/sensor/dev-1/{k}/config"
         for k in ("state", "last_loss", "adapter_version", "temperature")]
        + [f"homeassistant/button/dev-1/{k}/config" for k in ("train_now", "pause", "resume")]
    )
    unique = {p["unique_id"] for p in configs.values()}
    assert len(unique) == len(configs)
    for payload in configs.values():
        assert payload["device"] == {
            "identifiers": ["mobizo_dev-1"], "name": "mobizo dev-1", "manufacturer": "mobizo",
            "model": "qwen (qwen2, 8da4w)", "sw_version": "0.1.0"}
        assert [a["topic"] for a in payload["availability"]] == [T.available]


def test_sensors_read_the_retained_state_and_buttons_send_commands():
    configs = _configs()
    temp = configs["homeassistant/sensor/dev-1/temperature/config"]
    assert temp["state_topic"] == T.state
    assert (temp["device_class"], temp["unit_of_measurement"]) == ("temperature", "°C")
    assert temp["state_class"] == "measurement"
    for key, command in (("train_now", "train-now"), ("pause", "pause"), ("resume", "resume")):
        button = configs[f"homeassistant/button/dev-1/{key}/config"]
        assert button["command_topic"] == T.cmd(command)
        assert button["command_topic"].startswith(T.prefix + "/cmd/")  # covered by the ACL
        assert button["retain"] is False  # a retained command would be refused anyway
        # The press is an ordinary, valid command request with a reply route of its own.
        parsed = parse_command(command, button["payload_press"].encode(), now=0.0,
                               max_payload_bytes=4096)
        assert isinstance(parsed, ParsedCommand), parsed
        assert parsed.request.request_id is None and parsed.request.job_id is None
        assert T.reply_allowed(parsed.request.reply_to or "")


def test_templates_render_numbers_and_none_for_missing_values():
    configs = _configs()
    full = StateDocument(
        state="training", reason="burst 3",
        adapter=AdapterInfo(version=7),
        last_burst=BurstInfo(steps=10, loss=2.3456),
        constraints=ConstraintsInfo(thermal="63 C", temp_c=63.0),
    ).model_dump(mode="json")
    empty = StateDocument(state="idle").model_dump(mode="json")
    expect = {"state": ("training", "idle"), "last_loss": ("2.3456", "None"),
              "adapter_version": ("7", "None"), "temperature": ("63.0", "None")}
    for key, (with_values, without) in expect.items():
        template = configs[f"homeassistant/sensor/dev-1/{key}/config"]["value_template"]
        assert _render(template, full) == with_values
        assert _render(template, empty) == without  # "None": Home Assistant shows unknown
    attrs = configs["homeassistant/sensor/dev-1/state/config"]["json_attributes_template"]
    assert json.loads(_render(attrs, full)) == {"reason": "burst 3"}


def test_availability_maps_will_and_goodbye_to_offline():
    avail = _configs()["homeassistant/sensor/dev-1/state/config"]["availability"][0]
    for status, shown in (("online", "online"), ("offline", "offline"), ("stopped", "offline")):
        doc = Availability(status=status, session_seq=3, device_id="dev-1").model_dump(mode="json")
        assert _render(avail["value_template"], doc) == shown
    assert (avail["payload_available"], avail["payload_not_available"]) == ("online", "offline")


def test_node_id_replaces_what_home_assistant_refuses():
    assert node_id("dev-1_a") == "dev-1_a"
    assert node_id("pi.kitchen") == "pi_kitchen"
    topics = [c.topic for c in discovery_configs(
        "ha", DeviceTopics.for_device("f1", "pi.kitchen"),
        HaDevice("pi.kitchen", "n", "m", "v"))]
    assert all(t.split("/")[2] == "pi_kitchen" for t in topics)


def test_config_is_off_by_default_and_checks_the_prefix():
    assert MqttConfig().home_assistant == HomeAssistantConfig()
    assert not MqttConfig().home_assistant.enabled
    ok = MqttConfig.model_validate({"home_assistant": {"enabled": True,
                                                       "discovery_prefix": "ha/disc"}})
    assert ok.home_assistant.discovery_prefix == "ha/disc"
    for bad in ("home/#", "/ha", "ha/", "", "a+b"):
        with pytest.raises(ValidationError, match="discovery_prefix"):
            MqttConfig.model_validate({"home_assistant": {"discovery_prefix": bad}})
    with pytest.raises(ValidationError, match="extra"):
        MqttConfig.model_validate({"home_assistant": {"enable": True}})


def test_the_state_document_carries_the_temperature_as_a_number():
    from agent.core.readings import DeviceSnapshot, PowerReading, ThermalReading
    from agent.core.status import AgentStatus
    from agent.services.daemon.fleet_side import state_document

    snap = DeviceSnapshot(
        power=PowerReading(source="mains", charging=False, battery_pct=None, has_battery=False),
        thermal=(ThermalReading("thermal_zone0", "cpu-thermal", 63.4),
                 ThermalReading("thermal_zone1", "gpu-thermal", 58.0)))
    doc = state_document(AgentStatus(), snap, {})
    assert doc.constraints.temp_c == 63.0 and doc.constraints.thermal == "63 C"
    assert state_document(AgentStatus(), None, {}).constraints.temp_c is None

"""Home Assistant MQTT discovery payloads for one device (pure: topics and JSON, no I/O).

Home Assistant creates an entity for each retained JSON config it finds under
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` and removes it when that
config is cleared (an empty retained payload); see
https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery. One device announces:

- sensors read from the retained ``state`` document the link already publishes, each with a
  ``value_template`` (no second state topic to keep in step): the state (its reason as an
  attribute), the last burst's loss, the active adapter version, the SoC temperature (°C,
  ``device_class: temperature``);
- buttons whose ``command_topic`` is the device's own ``cmd/train-now``, ``cmd/pause`` and
  ``cmd/resume``, with a fixed ``payload_press`` that is an ordinary command request: a press
  goes through the same parsing, refusals and handlers as a fleet command, and whoever may
  publish on those topics (the broker's ACL) may press (docs/security.md).

Every entity names the device's ``available`` topic for availability (``online`` is available;
``offline``, the Last Will, and ``stopped`` are not) and is grouped under one Home Assistant
device, as zigbee2mqtt and Frigate do. The ``node_id`` level is the device id, so a broker ACL
can give each device exactly its own discovery topics (``homeassistant/+/%u/+/config``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agent.core.topics import DeviceTopics

#: Where button presses are answered (the device's own ``cmd-result/``): nobody has to listen,
#: but a reply route keeps each press from being logged as unanswerable.
REPLY_ID = "home-assistant"

# Home Assistant allows only these characters in a node id and an object id.
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class HaDevice:
    """What Home Assistant's device registry shows for this device."""

    device_id: str
    name: str
    model: str
    sw_version: str


@dataclass(frozen=True)
class DiscoveryConfig:
    """One retained discovery config: its topic and its JSON document."""

    topic: str
    payload: dict[str, Any]

    def payload_bytes(self) -> bytes:
        """The payload as published (compact, keys sorted: the same config is the same bytes)."""
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Sensor:
    key: str
    name: str
    template: str
    extra: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class _Button:
    key: str
    command: str
    name: str
    args: tuple[tuple[str, Any], ...] = ()
    icon: str = ""


# Templates read the state document (agent/core/fleet_documents.py StateDocument). A value
# that is null renders as "None", which Home Assistant shows as unknown.
SENSORS: tuple[_Sensor, ...] = (
    _Sensor("state", "State", "{{ value_json.state }}", (
        ("icon", "mdi:brain"),
        ("json_attributes_template", "{{ {'reason': value_json.reason} | tojson }}"),
    )),
    _Sensor("last_loss", "Last loss",
            "{{ value_json.last_burst.loss if value_json.last_burst else None }}", (
                ("state_class", "measurement"),
                ("suggested_display_precision", 4),
                ("icon", "mdi:chart-bell-curve-cumulative"),
            )),
    _Sensor("adapter_version", "Adapter version", "{{ value_json.adapter.version }}", (
        ("icon", "mdi:tag"),
    )),
    _Sensor("temperature", "SoC temperature", "{{ value_json.constraints.temp_c }}", (
        ("device_class", "temperature"),
        ("unit_of_measurement", "°C"),
        ("state_class", "measurement"),
        ("entity_category", "diagnostic"),
    )),
)

BUTTONS: tuple[_Button, ...] = (
    _Button("train_now", "train-now", "Train now", icon="mdi:school"),
    _Button("pause", "pause", "Pause training", (("reason", "paused from Home Assistant"),),
            icon="mdi:pause"),
    _Button("resume", "resume", "Resume training", icon="mdi:play"),
)


def node_id(device_id: str) -> str:
    """The discovery ``node_id`` of a device: its id, with characters Home Assistant refuses
    (a device id may hold ``.``) replaced by ``_``."""
    return _NOT_ID.sub("_", device_id)


def availability(topics: DeviceTopics) -> list[dict[str, str]]:
    """The ``availability`` list: the device's ``available`` topic, read as online / offline."""
    return [{
        "topic": topics.available,
        "value_template": "{{ 'online' if value_json.status == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }]


def press_payload(topics: DeviceTopics, args: dict[str, Any]) -> str:
    """What a button publishes: a command request with ``args`` and a reply route of its own.

    No ``request_id`` or ``job_id``: the device takes a long command's id from them, and a
    fixed one would make every later press a duplicate of the first.
    """
    request = {"args": args, "reply_to": topics.cmd_result(REPLY_ID)}
    return json.dumps(request, sort_keys=True, separators=(",", ":"))


def _common(topics: DeviceTopics, device: HaDevice, key: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": f"mobizo_{node_id(device.device_id)}_{key}",
        "availability": availability(topics),
        "device": {
            "identifiers": [f"mobizo_{device.device_id}"],
            "name": device.name,
            "manufacturer": "mobizo",
            "model": device.model,
            "sw_version": device.sw_version,
        },
        "origin": {"name": "mobizo-agent", "sw_version": device.sw_version},
        "qos": 1,
    }


def discovery_configs(
    discovery_prefix: str, topics: DeviceTopics, device: HaDevice
) -> list[DiscoveryConfig]:
    """Every discovery config of ``device``: its sensors, then its buttons.

    Args:
        discovery_prefix: Home Assistant's discovery prefix (``homeassistant``).
        topics: the device's own topics (state, availability, commands).
        device: what Home Assistant shows for it.
    """
    node = node_id(device.device_id)
    out: list[DiscoveryConfig] = []
    for sensor in SENSORS:
        payload = _common(topics, device, sensor.key, sensor.name)
        payload.update(state_topic=topics.state, value_template=sensor.template,
                       **dict(sensor.extra))
        if "json_attributes_template" in payload:
            payload["json_attributes_topic"] = topics.state
        out.append(DiscoveryConfig(f"{discovery_prefix}/sensor/{node}/{sensor.key}/config",
                                   payload))
    for button in BUTTONS:
        payload = _common(topics, device, button.key, button.name)
        payload.update(command_topic=topics.cmd(button.command),
                       payload_press=press_payload(topics, dict(button.args)),
                       retain=False, icon=button.icon)
        out.append(DiscoveryConfig(f"{discovery_prefix}/button/{node}/{button.key}/config",
                                   payload))
    return out

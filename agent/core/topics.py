"""Every MQTT topic string of the fleet link, built and parsed in one place.

Layout (``<prefix>`` = ``mobizo/v1/<fleet>/<device-id>``)::

    <prefix>/available               online | offline (Last Will) | stopped, retained, QoS 1
    <prefix>/state                   state document, retained, QoS 1
    <prefix>/telemetry               loss points + resource use, QoS 0
    <prefix>/config/desired          desired runtime overrides, retained, versioned
    <prefix>/config/reported         what the device applied (or why not), retained
    <prefix>/cmd/<name>              command requests
    <prefix>/cmd-result/<request>    replies for clients without an MQTT 5 response topic
    <prefix>/jobs/<job-id>           job progress, retained

Controllers receive replies under ``mobizo/v1/<fleet>/_controllers/<client-id>/...``; a device
id never starts with ``_``, so that namespace is no device's prefix. A device publishes replies
only there or under its own ``cmd-result/`` (:meth:`DeviceTopics.reply_allowed`): a request
cannot make it publish on another device's topics.

The ``v1`` segment versions the topic tree itself so a later layout can live beside this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "mobizo"
TREE_VERSION = "v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Segments starting with "_" are reserved (the controllers' namespace), never a device id.
CONTROLLERS = "_controllers"
# Request and job ids appear in topics: keep them to a safe alphabet (no wildcards, no slashes).
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def valid_segment(text: str) -> bool:
    """True when ``text`` may be a fleet, device or command name segment."""
    return bool(_SEGMENT.match(text))


def valid_id(text: str) -> bool:
    """True when ``text`` may be a request or job id (it becomes a topic segment)."""
    return bool(_ID.match(text))


def valid_publish_topic(topic: str) -> bool:
    """True when ``topic`` is a topic a client may publish to (no wildcards, not empty)."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and (len(topic.encode("utf-8")) <= 65535)
    )


@dataclass(frozen=True)
class DeviceTopics:
    """Topics of one device. Build with :meth:`for_device`; names are validated there."""

    fleet: str
    device_id: str

    @classmethod
    def for_device(cls, fleet: str, device_id: str) -> DeviceTopics:
        """Topics for ``device_id`` in ``fleet``.

        Raises:
            ValueError: a name contains characters that are not allowed in a topic segment.
        """
        for what, value in (("fleet", fleet), ("device id", device_id)):
            if not valid_segment(value):
                raise ValueError(
                    f"{what} {value!r} is not usable in MQTT topics: use 1-64 of A-Z a-z 0-9 _ . -"
                )
        if device_id.startswith("_"):
            raise ValueError(
                f"device id {device_id!r} starts with '_', which is reserved for the "
                f"controllers' namespace ({CONTROLLERS})"
            )
        return cls(fleet, device_id)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{TREE_VERSION}/{self.fleet}/{self.device_id}"

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/telemetry"

    @property
    def config_desired(self) -> str:
        return f"{self.prefix}/config/desired"

    @property
    def config_reported(self) -> str:
        return f"{self.prefix}/config/reported"

    @property
    def cmd_filter(self) -> str:
        """Subscription filter for every command of this device."""
        return f"{self.prefix}/cmd/+"

    def cmd(self, name: str) -> str:
        return f"{self.prefix}/cmd/{name}"

    def cmd_result(self, request_id: str) -> str:
        """Conventional reply topic for clients that cannot set an MQTT 5 response topic."""
        return f"{self.prefix}/cmd-result/{request_id}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{job_id}"

    @property
    def controllers_prefix(self) -> str:
        """Where controllers receive replies: ``mobizo/v1/<fleet>/_controllers/``."""
        return f"{ROOT}/{TREE_VERSION}/{self.fleet}/{CONTROLLERS}/"

    def reply_allowed(self, topic: str) -> bool:
        """True when this device may publish a command reply on ``topic``: the controller
        reply namespace of its fleet, or its own ``cmd-result/``. Nothing else (another
        device's ``cmd/``, a state topic, a topic of another fleet) is ever a reply route."""
        if not valid_publish_topic(topic):
            return False
        for head in (self.controllers_prefix, f"{self.prefix}/cmd-result/"):
            rest = topic[len(head) :] if topic.startswith(head) else ""
            if rest and all(valid_id(part) for part in rest.split("/")):
                return True
        return False

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Everything the device subscribes to on each connect (only its own topics)."""
        return (self.cmd_filter, self.config_desired, self.available)

    def command_name(self, topic: str) -> str | None:
        """The command name if ``topic`` is one of this device's command topics, else None."""
        head = f"{self.prefix}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if valid_segment(name) else None


@dataclass(frozen=True)
class FleetTopics:
    """Wildcard filters a controller uses to watch a whole fleet."""

    fleet: str

    def _all(self, leaf: str) -> str:
        return f"{ROOT}/{TREE_VERSION}/{self.fleet}/+/{leaf}"

    @property
    def all_available(self) -> str:
        return self._all("available")

    @property
    def all_state(self) -> str:
        return self._all("state")

    @property
    def all_telemetry(self) -> str:
        return self._all("telemetry")

    @property
    def all_reported(self) -> str:
        return self._all("config/reported")

    def controller_reply(self, client_id: str) -> str:
        """Response topic of one controller client (outside every device's own topics)."""
        return f"{ROOT}/{TREE_VERSION}/{self.fleet}/{CONTROLLERS}/{client_id}/reply"

    def device(self, device_id: str) -> DeviceTopics:
        return DeviceTopics.for_device(self.fleet, device_id)

    def split(self, topic: str) -> tuple[str, str] | None:
        """``(device_id, leaf)`` of a topic of this fleet, e.g. ``("dev1", "state")``, or None."""
        parts = topic.split("/", 4)
        if len(parts) != 5 or parts[:3] != [ROOT, TREE_VERSION, self.fleet]:
            return None
        if not valid_segment(parts[3]):
            return None
        return parts[3], parts[4]

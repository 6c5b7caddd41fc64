"""[mqtt.home_assistant] section: Home Assistant MQTT discovery (opt-in, off by default).

With ``enabled = true`` the fleet link announces the device to Home Assistant on each connect
(sensors for its state, last loss, adapter version and SoC temperature; buttons for train-now,
pause and resume) under ``<discovery_prefix>/<component>/<device id>/<object>/config``.
Turning it off again (a SIGHUP reload) clears those retained configs, so the entities go;
turning off ``[mqtt]`` as a whole cannot (no connection): turn this off first, or clear them
with ``mosquitto_pub -r -n -t <topic>``.
Who may press the buttons is the broker's ACL: see docs/security.md, "Home Assistant".
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Home Assistant's discovery prefix is a topic of its own choosing ("homeassistant" unless the
# user changed it in its MQTT integration): plain levels, no wildcards, no leading slash.
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery of this device. Off by default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False,
        description="announce this device to Home Assistant through MQTT discovery (retained "
        "configs); false removes what an earlier run announced",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        description="Home Assistant's discovery prefix (its MQTT integration setting)",
    )
    device_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the device's name in Home Assistant; default: 'mobizo <device id>'",
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _topic_levels(cls, value: str) -> str:
        if not _PREFIX.match(value):
            raise ValueError(
                f"{value!r} is not a discovery prefix: use 1-4 topic levels of A-Z a-z 0-9 _ - "
                "joined by '/', no wildcards, no leading or trailing '/' (Home Assistant's "
                "default is 'homeassistant')"
            )
        return value

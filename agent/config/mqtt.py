"""[mqtt] section: the optional fleet link to an MQTT 3.1.1 / 5 broker.

The agent works fully offline; with ``enabled = false`` (the default) nothing here is used.
Secrets never live in the TOML file: ``password_file`` names a file (or a systemd credential,
see ``LoadCredential=`` / ``$CREDENTIALS_DIRECTORY``) whose first line is the password.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config.home_assistant import HomeAssistantConfig
from agent.errors import ConfigError
from agent.io.mqtt_guard import is_loopback_host

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class MqttTlsConfig(BaseModel):
    """TLS towards the broker: server verification by CA, optional client certificate."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="use TLS (port is usually 8883)")
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that signed the broker; default: system CAs"
    )
    cert_file: Path | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="PEM private key of cert_file")
    insecure_skip_hostname_check: bool = Field(
        default=False, description="accept a broker certificate whose name does not match host"
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.tls: set both cert_file and key_file, or neither")
        return self


class MqttConfig(BaseModel):
    """How to reach the fleet controller's MQTT broker. Off by default: the agent works offline."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="connect to a fleet broker")
    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port")
    fleet: str = Field(default="default", pattern=_NAME, description="fleet name in topics")
    device_id: str | None = Field(
        default=None,
        pattern=_NAME,
        description="this device's id in topics; default: /etc/machine-id or the host name",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol version; 3.1.1 for old brokers"
    )
    client_id: str | None = Field(
        default=None,
        max_length=64,
        description="MQTT client id; default: mobizo-<fleet>-<device_id>",
    )
    username: str | None = Field(default=None, max_length=256, description="broker user name")
    password_file: str | None = Field(
        default=None,
        description="file whose first line is the broker password; a bare name is looked up in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential=)",
    )
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig, description="TLS settings")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive interval")
    qos: Literal[0, 1] = Field(
        default=1, description="QoS for state, availability, replies and jobs"
    )
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60, description="first reconnect delay")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="longest reconnect delay"
    )
    reconnect_jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="fraction of each delay drawn at random, so a fleet does not reconnect in step",
    )
    state_interval_s: float = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="republish the retained state at least this often",
    )
    state_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the state is checked for changes"
    )
    telemetry_interval_s: float = Field(
        default=30.0, ge=0.05, le=86400, description="publish a telemetry message this often"
    )
    telemetry_qos: Literal[0, 1] = Field(
        default=0, description="QoS of telemetry (live and spooled alike, to keep their order)"
    )
    telemetry_max_points: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="most loss-curve points per telemetry message (older ones are dropped)",
    )
    spool_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        le=2**34,
        description="offline spool size bound; the oldest telemetry goes first",
    )
    spool_max_age_s: float = Field(
        default=7 * 86400.0,
        ge=1,
        le=365 * 86400.0,
        description="offline telemetry older than this is dropped",
    )
    command_max_payload_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=16 * 1024 * 1024,
        description="larger command / desired-config payloads get an error result",
    )
    max_packet_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=268_435_455,  # the largest MQTT packet (a variable byte integer's range)
        description="MQTT 5 Maximum Packet Size announced to the broker (it drops larger ones)",
    )
    inbox_max: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="messages waiting for the worker; beyond this new ones are dropped and logged",
    )
    inbox_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        le=1 << 30,
        description="payload bytes waiting for the worker; beyond this new messages are dropped",
    )
    inbound_rate_per_s: float = Field(
        default=20.0,
        gt=0,
        le=100_000,
        description="messages per second accepted on any one topic (sustained); more are dropped",
    )
    inbound_burst: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="messages one topic may send at once before inbound_rate_per_s applies",
    )
    max_json_depth: int = Field(
        default=32,
        ge=4,
        le=1000,
        description="deeper JSON nesting in a command or desired config is refused unparsed",
    )
    job_timeout_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        le=7 * 86400.0,
        description="a job still running after this is marked TIMED_OUT",
    )
    max_queued_jobs: int = Field(
        default=16, ge=1, le=10_000, description="jobs waiting beyond this are REJECTED"
    )
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="keep the MQTT session (subscriptions, QoS 1 commands sent meanwhile) this "
        "long while the device is offline; 0: a clean session at every connect. MQTT 3.1.1 "
        "has no expiry: any value > 0 keeps the session until the broker's own limit "
        "(mosquitto: persistent_client_expiration)",
    )
    job_cancel_grace_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="a canceled job still running after this is marked CANCELED anyway",
    )
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig,
        description="Home Assistant MQTT discovery (opt-in; agent/config/home_assistant.py)",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"mqtt.reconnect_max_s ({self.reconnect_max_s}) must be >= "
                f"reconnect_min_s ({self.reconnect_min_s})"
            )
        return self

    @field_validator("device_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("_"):
            raise ValueError("a device id must not start with '_' (the controllers' namespace)")
        return value

    @model_validator(mode="after")
    def _password_only_over_tls(self) -> MqttConfig:
        # A password in clear text is readable by anyone on the path; on loopback there is
        # no path. The transport refuses it again at connect time (a password handed in).
        if (
            self.enabled
            and self.password_file is not None
            and not self.tls.enabled
            and not is_loopback_host(self.host)
        ):
            raise ValueError(
                f"mqtt.password_file is set but mqtt.tls.enabled is false and the broker "
                f"{self.host!r} is not on loopback: the password would cross the network in "
                "clear text; enable [mqtt.tls] or use a broker on 127.0.0.1"
            )
        return self

    def resolved_client_id(self, device_id: str) -> str:
        """The MQTT client id to use for ``device_id``."""
        return self.client_id or f"mobizo-{self.fleet}-{device_id}"[:64]

    def read_password(self, environ: dict[str, str] | None = None) -> str | None:
        """Read the password from ``password_file`` (or the systemd credentials directory).

        Args:
            environ: environment to look up ``CREDENTIALS_DIRECTORY`` in; default ``os.environ``.

        Returns:
            The first line of the file, stripped; None when no file is set or it is blank.

        Raises:
            ConfigError: the file is set but cannot be read.
        """
        if self.password_file is None:
            return None
        env = os.environ if environ is None else environ
        path = Path(self.password_file)
        candidates = [path]
        if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
            candidates.insert(0, Path(env["CREDENTIALS_DIRECTORY"]) / path)
        for candidate in candidates:
            if candidate.is_file():
                try:
                    text = candidate.read_text(encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(
                        f"mqtt.password_file: cannot read {candidate}: {exc}; check its permissions"
                    ) from exc
                # systemd 252 rejects an empty SetCredential=, so the unit's fallback for a
                # missing secret is a lone newline: blank means "no password".
                first = text.splitlines()[0].strip() if text.strip() else ""
                return first or None
        raise ConfigError(
            f"mqtt.password_file: {self.password_file!r} not found (looked in "
            f"{', '.join(str(c) for c in candidates)}); create it or set LoadCredential="
        )


def default_device_id(machine_id_file: Path = Path("/etc/machine-id")) -> str:
    """A stable device id when the config names none: the machine id, else the host name."""
    try:
        text = machine_id_file.read_text(encoding="ascii").strip()
        if text:
            return text[:64]
    except OSError:
        pass
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "device"

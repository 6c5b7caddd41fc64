"""The [mqtt] section: bounds, TLS pairing, passwords from files and systemd credentials."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config.mqtt import MqttConfig, default_device_id
from agent.errors import ConfigError


def test_defaults_are_offline_and_valid():
    c = MqttConfig()
    assert not c.enabled and c.protocol == "5" and c.qos == 1
    assert c.resolved_client_id("dev1") == "mobizo-default-dev1"


@pytest.mark.parametrize(
    "bad",
    [
        {"port": 0},
        {"fleet": "a/b"},
        {"device_id": "x+y"},
        {"protocol": "4"},
        {"qos": 2},
        {"reconnect_min_s": 10, "reconnect_max_s": 1},
        {"tls": {"cert_file": "/c"}},
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        MqttConfig.model_validate(bad)


def test_password_from_file_and_credentials_directory(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    assert MqttConfig(password_file=str(tmp_path / "pw")).read_password() == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("fromsystemd")
    c = MqttConfig(password_file="mqtt-password")
    assert c.read_password({"CREDENTIALS_DIRECTORY": str(creds)}) == "fromsystemd"
    with pytest.raises(ConfigError, match="not found"):
        c.read_password({})
    assert MqttConfig().read_password() is None


def test_default_device_id(tmp_path):
    (tmp_path / "machine-id").write_text("abc123\n")
    assert default_device_id(tmp_path / "machine-id") == "abc123"
    assert default_device_id(tmp_path / "missing")

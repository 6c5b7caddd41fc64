"""Username / password from a file (and from the systemd credentials directory)."""

from __future__ import annotations

import json
import uuid

import pytest

from agent.config.mqtt import MqttConfig
from agent.controller.cli import main as fleet_main
from tests.fleet_broker import LocalBroker, mosquitto_path
from tests.integration.conftest import FAST

pytestmark = pytest.mark.broker


@pytest.fixture()
def auth_broker(tmp_path):
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    b = LocalBroker(tmp_path / "mosq", users={"dev1": "device-secret", "ops": "ops-secret"})
    b.start()
    yield b
    b.stop()


def _config(broker, fleet, password_file: str) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "fleet": fleet,
            **FAST,
            "username": "dev1",
            "password_file": password_file,
        }
    )


def test_credentials_from_systemd_directory(
    auth_broker, tmp_path, link_factory, capsys, monkeypatch
):
    fleet = f"t{uuid.uuid4().hex[:8]}"
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("device-secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # what systemd sets for the unit
    link, _ = link_factory(_config(auth_broker, fleet, "mqtt-password"), start=False)
    link.start()
    try:
        assert link.transport.wait_connected(10)
        ops_pw = tmp_path / "ops.pw"
        ops_pw.write_text("ops-secret")
        base = ["--port", str(auth_broker.port), "--fleet", fleet, "--username", "ops"]
        code = 1
        for _ in range(20):  # the link subscribes right after CONNACK; allow it a moment
            code = fleet_main(
                [*base, "--password-file", str(ops_pw), "cmd", "dev1", "status", "--timeout", "0.5"]
            )
            if code == 0:
                break
        assert code == 0
        # Attempts that timed out printed to stderr only: stdout is the one answer.
        assert json.loads(capsys.readouterr().out)["ok"]
    finally:
        link.stop()


def test_wrong_password_never_connects(auth_broker, tmp_path, link_factory):
    fleet = f"t{uuid.uuid4().hex[:8]}"
    (tmp_path / "pw").write_text("wrong")
    link, _ = link_factory(_config(auth_broker, fleet, str(tmp_path / "pw")), start=False)
    link.start()
    try:
        assert not link.transport.wait_connected(1.5)
    finally:
        link.stop()
    assert fleet_main(["--port", str(auth_broker.port), "--fleet", fleet, "devices"]) == 3

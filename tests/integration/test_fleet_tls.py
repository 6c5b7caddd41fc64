"""Mutual TLS against mosquitto with test-generated certificates (openssl)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from agent.config.mqtt import MqttConfig
from agent.fleet.cli import main as fleet_main
from agent.fleet.client import BrokerOptions, FleetClient
from tests.integration.conftest import FAST

pytestmark = pytest.mark.broker


def _tls_config(broker, fleet, cert, key, ca) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "enabled": True,
            "host": "127.0.0.1",
            "port": broker.tls_port,
            "fleet": fleet,
            **FAST,
            "tls": {
                "enabled": True,
                "ca_file": str(ca),
                "cert_file": str(cert),
                "key_file": str(key),
            },
        }
    )


def test_link_and_controller_over_mutual_tls(tls_broker, tls_files, fleet, link_factory, capsys):
    f = tls_files
    config = _tls_config(tls_broker, fleet, f.client_cert, f.client_key, f.ca)
    link, _ = link_factory(config, start=False)
    link.start()
    try:
        assert link.transport.wait_connected(10)
        # The birth follows the SUBSCRIBE on the link's connection: once a controller sees
        # it (over TLS, with its own client certificate), commands reach the device.
        opts = BrokerOptions(
            port=tls_broker.tls_port,
            fleet=fleet,
            ca_file=f.ca,
            cert_file=f.client_cert,
            key_file=f.client_key,
            tls=True,
        )
        deadline = time.monotonic() + 10
        while True:
            with FleetClient(opts) as fc:
                view = fc.snapshot(0.5, device="dev1").get("dev1")
            if (
                view
                and view.available
                and view.available.status == "online"
                and view.available.session_seq == link.session_seq
            ):
                break
            assert time.monotonic() < deadline, "no birth over TLS"
        args = [
            "--host",
            "127.0.0.1",
            "--port",
            str(tls_broker.tls_port),
            "--fleet",
            fleet,
            "--tls-ca",
            str(f.ca),
            "--tls-cert",
            str(f.client_cert),
            "--tls-key",
            str(f.client_key),
        ]
        assert fleet_main([*args, "cmd", "dev1", "status", "--timeout", "10"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] and out["result"]["state"] == "idle"
    finally:
        link.stop()


def test_untrusted_client_certificate_never_connects(tls_broker, tls_files, fleet, link_factory):
    f = tls_files
    config = _tls_config(tls_broker, fleet, f.other_cert, f.other_key, f.ca)
    link, _ = link_factory(config, device_id=f"x{uuid.uuid4().hex[:6]}", start=False)
    link.start()
    try:
        assert not link.transport.wait_connected(1.5)
    finally:
        link.stop()


def test_plain_tcp_client_is_not_served_on_tls_port(tls_broker, fleet):
    from agent.fleet.client import FleetError

    with pytest.raises(FleetError):
        FleetClient(
            BrokerOptions(port=tls_broker.tls_port, fleet=fleet), connect_timeout=1.5
        ).__enter__()

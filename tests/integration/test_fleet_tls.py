"""Mutual TLS against mosquitto with test-generated certificates (openssl)."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.mqtt import MqttConfig
from agent.controller.cli import main as fleet_main
from agent.controller.client import BrokerOptions, FleetClient
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


def _controller_options(tls_broker, fleet, files) -> BrokerOptions:
    """A fleet controller on the TLS port, with its own client certificate."""
    return BrokerOptions(port=tls_broker.tls_port, fleet=fleet, ca_file=files.ca,
                         cert_file=files.client_cert, key_file=files.client_key, tls=True)


def test_link_and_controller_over_mutual_tls(tls_broker, tls_files, fleet, link_factory, capsys):
    f = tls_files
    config = _tls_config(tls_broker, fleet, f.client_cert, f.client_key, f.ca)
    link, _ = link_factory(config, start=False)
    link.start()
    try:
        assert link.transport.wait_connected(10)
        # The birth follows the SUBSCRIBE on the link's connection: once a controller sees
        # it (over TLS, with its own client certificate), commands reach the device.
        opts = _controller_options(tls_broker, fleet, f)
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
        assert link.transport.connects == 1, "the link's TLS connection broke and was renewed"
    finally:
        link.stop()


def test_command_burst_and_telemetry_share_one_tls_connection(
    tls_broker, tls_files, fleet, link_factory
):
    """The worker publishes replies and telemetry while the network thread reads commands: all
    socket I/O must stay on the network thread, or TLS records get corrupted and the broker
    drops the link (seen as "decryption failed or bad record mac" in its log)."""
    f = tls_files
    config = _tls_config(tls_broker, fleet, f.client_cert, f.client_key, f.ca)
    # A burst from one controller: the per-topic inbound rate limit is set to let it through.
    config = config.model_copy(update={"telemetry_interval_s": 0.05, "inbound_burst": 1000})
    link, _ = link_factory(config, start=False)
    link.start()
    stop = threading.Event()

    def feed() -> None:  # a busy loss curve: telemetry publishes while commands arrive
        step = 0
        while not stop.wait(0.005):
            step += 1
            link.record_point(step, 1.0)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        assert link.transport.wait_connected(10)
        feeder.start()
        opts = _controller_options(tls_broker, fleet, f)
        sent: set[str] = set()
        answered: set[str] = set()
        with FleetClient(opts) as fc:
            reply_topic = fc.topics.controller_reply(fc.client_id)
            fc.subscribe(reply_topic)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            for _ in range(300):  # sent without waiting for answers: they overlap
                request_id = uuid.uuid4().hex
                sent.add(request_id)
                body = json.dumps({"request_id": request_id, "args": {}}).encode()
                fc.publish(fc.topics.device("dev1").cmd("status"), body, props=props)
            deadline = time.monotonic() + 30
            while answered != sent and time.monotonic() < deadline:
                try:
                    msg = fc.messages.get(timeout=0.5)
                except queue.Empty:
                    continue
                if msg.topic == reply_topic:
                    answered.add(json.loads(msg.payload)["request_id"])
        assert answered == sent, f"{len(sent - answered)} of {len(sent)} commands unanswered"
        assert link.transport.connects == 1, "the link's TLS connection broke and was renewed"
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
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
    from agent.controller.client import FleetError

    with pytest.raises(FleetError):
        FleetClient(
            BrokerOptions(port=tls_broker.tls_port, fleet=fleet), connect_timeout=1.5
        ).__enter__()

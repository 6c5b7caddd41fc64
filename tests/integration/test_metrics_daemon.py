"""The daemon's metrics and numeric telemetry (issue 19 item 1), from a real daemon.

A real ``mobizo-agent run`` on the fake board trains a burst with the real trainer and
evaluator children, with its fleet link on a real mosquitto: its ``/metrics`` (``[daemon]
metrics_listen = "unix"``) is scraped over real HTTP and parsed with prometheus-client's
parser, and its telemetry carries the board's numbers. The TCP listener's token rule is
checked on the real listener the daemon builds from its config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.core.topics import DeviceTopics
from agent.io.http import Client
from agent.services.daemon.metrics import DaemonMetrics, metrics_server
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    base_config,
    seed_store,
    write_config,
)
from tests.integration.metrics_scrape import Samples, labelled, parse, value

ENDED = ("published", "rejected", "failed", "rolled_back")


def _scrape(sock: Path) -> Samples:
    reply = Client(unix=sock, timeout=10).get("/metrics")
    assert reply.status == 200, reply.text
    return parse(reply.text)


@pytest.mark.runtime
def test_a_burst_moves_the_daemon_metrics_and_telemetry_carries_numbers(
        tmp_path: Path, starter_bundle: Path, broker: Any, sub_factory: Any, fleet: str
) -> None:
    from tests.integration.conftest import FAST

    device = FakeDevice(tmp_path / "device")
    device.heat(47.5)
    state = tmp_path / "state"
    seed_store(state, n=24)
    mqtt = {"enabled": True, "host": broker.host, "port": broker.port, "fleet": fleet,
            "device_id": "dev1", **FAST, "telemetry_interval_s": 0.5}
    cfg = write_config(tmp_path / "agent.toml", base_config(
        tmp_path, device, starter_bundle, mqtt=mqtt, daemon={"metrics_listen": "unix"}))
    topics = DeviceTopics.for_device(fleet, "dev1")
    sub = sub_factory(topics.telemetry)
    daemon = DaemonProcess(cfg, state, tmp_path / "daemon.log")
    sock = state / "metrics.sock"
    try:
        daemon.wait_socket()
        done = daemon.wait_status(
            lambda s: (s.get("last_burst") or {}).get("outcome") in ENDED, 180, "a run to end")
        outcome = done["last_burst"]["outcome"]
        assert sock.exists()
        samples = _scrape(sock)
        assert value(samples, "mobizo_daemon_bursts_started_total") >= 1
        assert value(samples, "mobizo_daemon_bursts_finished_total") >= 1
        assert value(samples, "mobizo_daemon_train_steps_total") >= 6  # steps_per_burst
        verdicts = labelled(samples, "mobizo_daemon_eval_verdicts_total", "verdict")
        assert verdicts.get(outcome, 0) >= 1, verdicts
        states = labelled(samples, "mobizo_daemon_state", "state")
        assert sum(states.values()) == 1 and set(states) >= {"idle", "training", "waiting"}
        assert "mobizo_daemon_train_loss" in {n for n, _ in samples}
        assert value(samples, "mobizo_daemon_temperature_celsius") == pytest.approx(47.5)
        assert value(samples, "mobizo_daemon_battery_ratio") == 1.0
        assert value(samples, "mobizo_daemon_charging") == 1.0
        assert value(samples, "mobizo_daemon_memory_available_bytes") == 8_000_000 * 1024
        assert value(samples, "mobizo_daemon_load1") == pytest.approx(0.1)
        assert value(samples, "mobizo_daemon_fleet_connected") == 1.0
        assert ("mobizo_daemon_spool_entries", frozenset()) in samples

        # telemetry: schema 2, the board's readings as numbers (the state keeps its text)
        body = sub.wait_json(topics.telemetry, lambda d: d.get("board") is not None, 20)
        assert body["schema_version"] == 2
        board = body["board"]
        assert board["temp_c"] == pytest.approx(47.5)
        assert board["battery_pct"] == 100.0 and board["charging"] is True
        assert board["power"] == "mains"
        assert board["mem_available_mb"] == pytest.approx(8_000_000 / 1024)
        assert board["load_1m"] == pytest.approx(0.1)
        assert json.dumps(body)  # plain JSON numbers
        assert daemon.terminate() == 0
        assert not sock.exists()  # removed at stop
    finally:
        daemon.kill()


def test_the_daemon_tcp_listener_needs_the_token(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "device")
    cfg_path = write_config(tmp_path / "agent.toml", base_config(
        tmp_path, device, tmp_path / "bundle", daemon={"metrics_listen": "127.0.0.1:0"}))
    cfg = load_config(cfg_path).config
    metrics = DaemonMetrics()
    metrics.burst_started(0)
    server = metrics_server(cfg, metrics)
    assert server is not None and server.address is not None
    server.start()
    try:
        token_file = cfg.inference.token_path(cfg.paths.state_dir)
        assert token_file.stat().st_mode & 0o777 == 0o600  # made at start if missing
        host, port = server.address
        for client in (Client(host, port), Client(host, port, token="x" * 43)):
            reply = client.get("/metrics")
            assert reply.status == 401 and reply.headers["www-authenticate"] == "Bearer"
        good = Client(host, port, token_file=token_file)
        reply = good.get("/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert value(parse(reply.text), "mobizo_daemon_bursts_started_total") == 1
        assert good.get("/other").status == 404
        # a rotated token is read at the next scrape
        token_file.write_text("r" * 43 + "\n")
        assert good.get("/metrics").status == 200
        assert Client(host, port, token="r" * 43).get("/metrics").status == 200
    finally:
        server.stop()
    started = time.monotonic()
    with pytest.raises(OSError):
        Client(host, port, timeout=2).get("/metrics")
    assert time.monotonic() - started < 2.5

"""The metrics modules on their own: counters, scrape-time readings, names, config, telemetry.

The real scrapes (real service, real daemon, real HTTP) are in
``tests/integration/test_metrics_serve.py`` and ``test_metrics_daemon.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from agent.config.daemon import DaemonConfig
from agent.core.fleet_documents import TELEMETRY_SCHEMA, BoardReadings, Telemetry
from agent.core.readings import DeviceSnapshot, PowerReading, ThermalReading
from agent.core.status import AgentStatus, BurstMetrics, Progress
from agent.services.daemon.metrics import (
    DaemonMetrics,
    DaemonView,
    FleetReading,
    fleet_reading,
    stop_reason,
)
from agent.services.inference.generation import GenerationResult
from agent.services.inference.metrics import ServiceMetrics


def _samples(page: tuple[bytes, str]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = page
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def _names(page: tuple[bytes, str]) -> set[str]:
    return {name for name, _ in _samples(page)}


def test_burst_counters_and_stop_reasons() -> None:
    m = DaemonMetrics()
    other = DaemonMetrics()  # a registry each: a second one never collides
    m.burst_started(4)  # a resumed run: its earlier steps are not this burst's
    m.stepped(5)
    m.stepped(7)
    m.stepped(7)  # the same report twice counts once
    m.stopping(stop_reason(None, ("thermal", "power")))
    m.burst_ended("stopped")
    m.burst_started(7)
    m.stopping(stop_reason("user pause", ("thermal",)))
    m.burst_ended("stopped")
    m.burst_started(7)
    m.burst_ended("finished")
    m.burst_started(0)
    m.burst_ended("failed")
    m.verdict("published")
    m.verdict("rejected")
    m.verdict("rejected")
    s = _samples(m.render())
    assert s[("mobizo_daemon_bursts_started_total", frozenset())] == 4
    assert s[("mobizo_daemon_train_steps_total", frozenset())] == 3
    assert s[("mobizo_daemon_bursts_stopped_total", frozenset({("reason", "thermal")}))] == 1
    assert s[("mobizo_daemon_bursts_stopped_total", frozenset({("reason", "paused")}))] == 1
    assert s[("mobizo_daemon_bursts_finished_total", frozenset())] == 1
    assert s[("mobizo_daemon_bursts_failed_total", frozenset())] == 1
    assert s[("mobizo_daemon_eval_verdicts_total", frozenset({("verdict", "rejected")}))] == 2
    assert stop_reason(None, ()) == "policy"
    assert _samples(other.render())[("mobizo_daemon_bursts_started_total", frozenset())] == 0


def test_readings_come_from_the_status_the_snapshot_and_the_link() -> None:
    m = DaemonMetrics()
    assert not any(n.startswith("mobizo_daemon_state") for n in _names(m.render()))  # no view
    status = AgentStatus().to("training", 1.0, "ok", progress=Progress(step=3, total=6,
                                                                       loss=2.5))
    snap = DeviceSnapshot(power=PowerReading(source="battery", battery_pct=42.0,
                                             has_battery=True),
                          thermal=(ThermalReading("thermal_zone0", "cpu", 61.0),
                                   ThermalReading("thermal_zone1", "gpu", None)),
                          load_1m=1.5, cpu_count=4, mem_available_mb=512.0)
    m.view = DaemonView(status=lambda: status, snapshot=lambda: snap,
                        fleet=lambda: FleetReading(False, 3, 900))
    s = _samples(m.render())
    assert s[("mobizo_daemon_state", frozenset({("state", "training")}))] == 1
    assert s[("mobizo_daemon_state", frozenset({("state", "idle")}))] == 0
    assert s[("mobizo_daemon_train_loss", frozenset())] == 2.5
    assert s[("mobizo_daemon_temperature_celsius", frozenset())] == 61.0
    assert s[("mobizo_daemon_battery_ratio", frozenset())] == 0.42
    assert s[("mobizo_daemon_charging", frozenset())] == 0
    assert s[("mobizo_daemon_on_mains", frozenset())] == 0
    assert s[("mobizo_daemon_memory_available_bytes", frozenset())] == 512 * 2**20
    assert s[("mobizo_daemon_load1", frozenset())] == 1.5
    assert s[("mobizo_daemon_fleet_connected", frozenset())] == 0
    assert s[("mobizo_daemon_spool_entries", frozenset())] == 3
    assert s[("mobizo_daemon_spool_bytes", frozenset())] == 900

    # after the run: the last burst's losses; a board without sensors shows no number
    last = BurstMetrics(started_at=0, ended_at=1, steps=6, outcome="rejected",
                        train_loss_end=1.25, heldout_loss_candidate=2.0,
                        heldout_loss_active=1.9)
    status = AgentStatus(state="waiting", last_burst=last, blocked_by=("power",))
    snap = DeviceSnapshot(power=PowerReading(source="mains"))
    m.view = DaemonView(status=lambda: status, snapshot=lambda: snap)
    s = _samples(m.render())
    assert s[("mobizo_daemon_train_loss", frozenset())] == 1.25
    assert s[("mobizo_daemon_eval_heldout_loss", frozenset({("adapter", "candidate")}))] == 2.0
    assert s[("mobizo_daemon_blocked", frozenset({("check", "power")}))] == 1
    names = _names(m.render())
    assert "mobizo_daemon_temperature_celsius" not in names
    assert "mobizo_daemon_battery_ratio" not in names
    assert "mobizo_daemon_fleet_connected" not in names  # no fleet link


class _Spool:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def stats(self) -> tuple[int, int]:
        if self.fail:
            raise RuntimeError("closed")
        return 2, 10


class _Link:
    def __init__(self, fail: bool) -> None:
        self.connected = True
        self.spool = _Spool(fail)


def test_fleet_reading_survives_a_closing_spool() -> None:
    assert fleet_reading(None) is None
    assert fleet_reading(_Link(False)) == FleetReading(True, 2, 10)
    assert fleet_reading(_Link(True)) == FleetReading(True, None, None)


def test_inference_metrics_count_tokens_latencies_and_swaps() -> None:
    seen: list[str] = []
    m = ServiceMetrics(queue_depth=lambda: 3, adapter_version=lambda: "v0002")
    m.request("/v1/completions", 200)
    m.refused("queue_full")
    m.generated(GenerationResult(text="ab", finish_reason="stop", prompt_tokens=10,
                                 completion_tokens=4, prefill_s=0.3, decode_s=0.4,
                                 cached_tokens=6), latency_s=1.0)
    m.generated(GenerationResult(text="", finish_reason="stop", prompt_tokens=5,
                                 completion_tokens=0, prefill_s=0.1, decode_s=0.0), 0.2)
    hook = m.counting_swaps(lambda version, path, bundle: seen.append(version))
    hook("v0003", Path("/x"), "b")
    m.counting_swaps(None)("v0004", Path("/y"), "b")
    s = _samples(m.render())
    assert s[("mobizo_inference_requests_total",
              frozenset({("endpoint", "/v1/completions"), ("status", "200")}))] == 1
    assert s[("mobizo_inference_rejected_total", frozenset({("reason", "queue_full")}))] == 1
    assert s[("mobizo_inference_prompt_tokens_total", frozenset())] == 15
    assert s[("mobizo_inference_prompt_cached_tokens_total", frozenset())] == 6
    assert s[("mobizo_inference_generated_tokens_total", frozenset())] == 4
    assert s[("mobizo_inference_time_to_first_token_seconds_count", frozenset())] == 2
    assert s[("mobizo_inference_time_to_first_token_seconds_sum", frozenset())] == \
        pytest.approx(0.6 + 0.2)
    # no token generated: no per-token observation
    assert s[("mobizo_inference_time_per_output_token_seconds_count", frozenset())] == 1
    assert s[("mobizo_inference_time_per_output_token_seconds_sum", frozenset())] == 0.1
    assert s[("mobizo_inference_queue_depth", frozenset())] == 3
    assert s[("mobizo_inference_adapter_info", frozenset({("version", "v0002")}))] == 1
    assert s[("mobizo_inference_adapter_swaps_total", frozenset())] == 2
    assert seen == ["v0003"]


@pytest.mark.parametrize("value", ["", "unix", "unix:///run/mobizo/metrics.sock",
                                   "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:0"])
def test_metrics_listen_accepts(value: str) -> None:
    assert DaemonConfig(metrics_listen=value).metrics_listen == value


@pytest.mark.parametrize("value, says", [
    ("unix://run/m.sock", "must be absolute"),
    ("9464", "is not 'HOST:PORT'"),
    ("localhost:http", "is not 'HOST:PORT'"),
    ("127.0.0.1:70000", "is not 'HOST:PORT'"),
])
def test_metrics_listen_refuses_with_the_fix(value: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        DaemonConfig(metrics_listen=value)


def test_telemetry_schema_2_carries_board_numbers() -> None:
    snap = DeviceSnapshot(power=PowerReading(source="battery", charging=False,
                                             battery_pct=80.0, has_battery=True),
                          thermal=(ThermalReading("z0", "cpu", 55.5),), load_1m=0.5,
                          cpu_count=4, mem_available_mb=1024.0)
    board = BoardReadings.from_snapshot(snap)
    assert board.model_dump() == {"temp_c": 55.5, "battery_pct": 80.0, "charging": False,
                                  "power": "battery", "mem_available_mb": 1024.0,
                                  "load_1m": 0.5, "cpu_count": 4}
    # no battery: "charging" means nothing, so it is None, not False
    assert BoardReadings.from_snapshot(DeviceSnapshot(PowerReading("mains"))).charging is None
    message = Telemetry(schema_version=TELEMETRY_SCHEMA, ts=1.0, session_seq=2, board=board)
    assert Telemetry.model_validate_json(message.model_dump_json()) == message
    assert TELEMETRY_SCHEMA == 2
    # a schema-1 message (no schema, no board) still reads, as schema 1
    old = Telemetry.model_validate({"ts": 1.0, "session_seq": 2, "points": []})
    assert old.board is None and old.schema_version == 1

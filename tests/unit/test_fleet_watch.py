"""``mobizo-fleet watch`` output: redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import json

import paho.mqtt.client as paho

from agent.controller.client import BrokerOptions, FleetClient
from agent.controller.watch import Watch

FLEET = "lab"


def _msg(device: str, leaf: str, doc: dict[str, object]) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(topic=f"mobizo/v1/{FLEET}/{device}/{leaf}".encode())
    msg.payload = json.dumps(doc).encode()
    return msg


def _feed(watch: Watch) -> None:
    fc = FleetClient(BrokerOptions(fleet=FLEET))  # never connected: only its parsing is used
    watch.start()
    watch.absorb(fc, _msg("dev1", "available",
                          {"status": "online", "session_seq": 3, "device_id": "dev1"}))
    watch.absorb(fc, _msg("dev1", "state", {
        "state": "training", "adapter": {"version": 4}, "session_seq": 3,
        "last_burst": {"steps": 10, "loss": 2.5},
        "constraints": {"thermal": "63 C"}}))  # an older agent: the temperature only as text
    watch.absorb(fc, _msg("dev1", "telemetry", {
        "ts": 1.0, "session_seq": 3, "points": [{"ts": 1.0, "step": 11, "loss": 1.25}]}))
    watch.absorb(fc, _msg("dev2", "available",
                          {"status": "offline", "session_seq": 1, "device_id": "dev2"}))
    # the same telemetry again changes nothing: no new line, no redraw
    watch.absorb(fc, _msg("dev1", "telemetry", {
        "ts": 2.0, "session_seq": 3, "points": [{"ts": 2.0, "step": 11, "loss": 1.25}]}))


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    watch = Watch(out, tty=False, clock=lambda: 0.0)
    _feed(watch)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0].split() == ["DEVICE", "LINK", "STATE", "ADAPTER", "LOSS", "TEMP", "ROUND",
                                "AT"]
    cells = [ln.split()[:-1] for ln in lines[1:]]  # without the time
    assert cells == [
        ["dev1", "online", "-", "-", "-", "-", "-"],
        ["dev1", "online", "training", "4", "2.5", "63C", "-"],
        ["dev1", "online", "training", "4", "1.25", "63C", "-"],  # the newest loss: telemetry's
        ["dev2", "offline", "-", "-", "-", "-", "-"],
    ]
    assert watch.changes == 4


def test_redrawn_in_place_on_a_terminal():
    out = io.StringIO()
    watch = Watch(out, tty=True, clock=lambda: 0.0)
    _feed(watch)
    watch.tick(0.5, force=True)
    text = out.getvalue()
    assert text.startswith("\x1b[2J\x1b[H")  # cleared once, at the start
    last = text.rsplit("\x1b[H", 1)[1]  # the latest frame, drawn over the previous one
    assert last.endswith("\x1b[J")  # whatever the previous frame left below is cleared
    rows = [ln.removesuffix("\x1b[K").split() for ln in last.split("\n")[:-1]]
    assert rows[0] == ["DEVICE", "LINK", "STATE", "ADAPTER", "LOSS", "TEMP", "ROUND"]
    assert rows[1] == ["dev1", "online", "training", "4", "1.25", "63C", "-"]
    assert rows[2] == ["dev2", "offline", "-", "-", "-", "-", "-"]
    assert "2 devices, 4 changes" in last
    before = out.getvalue()
    watch.tick(0.0, force=True)  # nothing changed since: nothing is written
    assert out.getvalue() == before

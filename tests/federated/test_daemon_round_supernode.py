"""The SuperNode side of the daemon wiring: its ClientApp relays rounds over the control
socket (a real unix socket server here, answering as the daemon does), its launcher reads
``[federated]``, its unit verifies, and the last round reaches the fleet's state document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from agent.core.fleet_documents import StateDocument
from agent.federated.compact import compact, expand
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.pool import GENERATOR
from agent.federated.supernode_app import DaemonLearner, learner_for
from agent.io.control_socket import ControlReply, ControlRequest, ControlServer
from agent.services.daemon.federated_round import with_round
from tests.deploy.unit_check import needs_systemd_analyze, stage_for_verify, verify

REPO = Path(__file__).resolve().parents[2]

INS = RoundInstructions(round=3, bundle_id="b1", generator=GENERATOR, pool_base=9,
                        pool_size=8, steps=1, q=2, lr=0.01, eps=0.01, clip=1.0)
TRAINED = DeviceReply(round=3, bundle_id="b1", generator=GENERATOR, pool_base=9, examples=5,
                      accumulator={"size": 8, "indices": [1, 4], "values": [0.5, -1.0]})


class FakeDaemonSide:
    """Answers ``federated-round`` the way the daemon does: running twice, then ``answer``."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.seen: list[dict[str, Any]] = []

    def handle(self, req: ControlRequest) -> ControlReply:
        self.seen.append(req.args)
        if len(self.seen) < 3:
            return ControlReply(ok=True, result={"status": "running", "round": 3})
        return ControlReply(ok=True, result=self.answer)


def _serve(tmp_path: Path, answer: dict[str, Any]) -> tuple[ControlServer, FakeDaemonSide]:
    side = FakeDaemonSide(answer)
    server = ControlServer(side.handle, tmp_path / "control.sock")
    server.start()
    return server, side


def test_the_client_app_relays_a_round_and_returns_the_daemons_reply(tmp_path: Path) -> None:
    answer = {"status": "trained", "round": 3, "reply": TRAINED.model_dump(mode="json")}
    server, side = _serve(tmp_path, answer)
    try:
        reply = DaemonLearner(tmp_path / "control.sock", salt=7, poll_s=0.01).train_round(INS)
    finally:
        server.stop()
    assert reply == TRAINED
    assert len(side.seen) == 3  # asked once, polled while it ran
    assert side.seen[0] == {"round": 3, "salt": 7, "instructions": compact(INS)}
    assert RoundInstructions.model_validate(expand(side.seen[0]["instructions"])) == INS


def test_a_declined_round_carries_the_daemons_reason(tmp_path: Path) -> None:
    answer = {"status": "declined", "round": 3, "reason": "thermal: 85 C"}
    server, _ = _serve(tmp_path, answer)
    try:
        reply = DaemonLearner(tmp_path / "control.sock", salt=7, poll_s=0.01).train_round(INS)
    finally:
        server.stop()
    assert (reply.status, reply.reason, reply.accumulator) == ("declined", "thermal: 85 C",
                                                                None)


def test_no_daemon_declines_instead_of_failing(tmp_path: Path) -> None:
    reply = DaemonLearner(tmp_path / "control.sock", salt=7).train_round(INS)
    assert reply.status == "declined" and "not running" in reply.reason


def test_the_node_config_names_the_socket_and_the_node_its_salt() -> None:
    ctx = Context(run_id=1, node_id=42, node_config={"control-socket": "/x/control.sock",
                                                      "round-timeout-s": 60},
                  state=RecordDict(), run_config={})
    learner = learner_for(ctx)
    assert (learner.socket, learner.salt, learner.timeout_s) == (Path("/x/control.sock"), 42,
                                                                 60.0)


def _launch(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.federated.supernode_launch",
                           "--config", str(config), *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_launcher_starts_a_supernode_only_when_enabled(tmp_path: Path) -> None:
    off = tmp_path / "off.toml"
    off.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    done = _launch(off, "--check")
    assert done.returncode == 1 and "enabled = false" in done.stderr
    on = tmp_path / "on.toml"
    on.write_text(off.read_text() + '[federated]\nenabled = true\nsuperlink = "127.0.0.1:9092"\n')
    assert _launch(on, "--check").returncode == 0
    shown = _launch(on, "--print")
    assert shown.returncode == 0, shown.stderr
    assert "--superlink 127.0.0.1:9092 --insecure" in shown.stdout
    assert f'control-socket="{tmp_path / "state" / "control.sock"}"' in shown.stdout


def test_a_config_it_cannot_read_fails_the_unit_rather_than_skipping_it(tmp_path: Path) -> None:
    # systemd reads exit 1..254 from ExecCondition= as "skip": a broken config must be 255
    broken = tmp_path / "broken.toml"
    broken.write_text("[federated]\nenabled = maybe\n")
    done = _launch(broken, "--check")
    assert done.returncode == 255, done.stderr
    assert "error:" in done.stderr


@needs_systemd_analyze
def test_the_supernode_unit_verifies(tmp_path: Path) -> None:
    staged = stage_for_verify(REPO / "systemd", tmp_path)
    python = tmp_path / "prefix" / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    done = verify(staged, ["mobizo-supernode.service"])
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_the_last_round_is_in_the_state_document() -> None:
    doc = StateDocument(state="waiting")
    assert with_round(doc, None) is doc
    out = with_round(doc, {"round": 4, "status": "declined", "reason": "power: on battery",
                           "at": 12.0})
    wire = json.loads(out.model_dump_json())
    assert wire["federated"] == {"round": 4, "status": "declined",
                                 "reason": "power: on battery", "served": "", "at": 12.0}


def test_install_ships_the_unit_but_does_not_enable_it() -> None:
    from agent.deploy.layout import SERVICES, SUPERNODE_UNIT, UNITS

    assert SUPERNODE_UNIT in UNITS and SUPERNODE_UNIT not in SERVICES


def test_the_largest_round_fits_the_control_sockets_line_and_comes_back_the_same() -> None:
    import numpy as np
    import pytest

    from agent.io.control_socket import MAX_LINE

    k = 4096  # [federated] max_pool_size's default: every seed in the aggregate, with levels
    values = tuple(float(np.float32(v)) for v in np.random.default_rng(0).standard_normal(k))
    ins = RoundInstructions.model_validate(
        {**INS.model_dump(), "pool_size": k, "previous_pool_base": 8,
         "previous": {"size": k, "indices": tuple(range(k)), "values": values},
         "seed_levels": tuple(i % 256 for i in range(k))})
    line = json.dumps({"cmd": "federated-round",
                       "args": {"round": 3, "salt": 7, "instructions": compact(ins)}})
    plain = json.dumps(ins.model_dump(mode="json"))
    assert len(line) < MAX_LINE < len(plain)
    assert RoundInstructions.model_validate(expand(json.loads(line)["args"]["instructions"])) \
        == ins
    with pytest.raises(ValueError, match="do not decode"):
        expand({**compact(ins), "packed": {"seed_levels": "not base64!"}})

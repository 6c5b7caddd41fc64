"""Round progress in ``mobizo-fleet`` (issue 20): the device's retained state document carries
its last federated round, and ``devices``, ``status`` and ``watch`` show it (a real broker and a
real fleet link over a simulated daemon)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.controller.cli import main as fleet_main
from agent.controller.simulator import SimDevice
from agent.core.fleet_documents import FederatedInfo
from tests.integration.conftest import mqtt_config

pytestmark = pytest.mark.broker


class RoundDevice(SimDevice):
    """A simulated daemon whose last federated round was declined on battery."""

    def __init__(self, state_dir: Path, *, step_s: float = 0.01) -> None:
        super().__init__(state_dir, step_s=step_s)
        self.federated = FederatedInfo(round=5, status="declined",
                                       reason="power: on battery", at=12.0)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = fleet_main(list(argv))
    captured = capsys.readouterr()
    print(argv, code, captured.err, file=sys.stderr)  # shown when a test fails
    return code, captured.out


def test_the_last_federated_round_shows_in_devices_status_and_watch(
        broker, fleet, link_factory, capsys) -> None:
    link_factory(mqtt_config(broker, fleet), "dev1", device_cls=RoundDevice)
    link_factory(mqtt_config(broker, fleet), "dev2")  # never asked for a round
    base = ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet]
    code, out = _run(capsys, *base, "devices", "--wait", "0.5")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[-1] == "FEDERATED"
    assert lines[1].startswith("dev1") and lines[1].endswith("r5 declined: power: on battery")
    assert lines[2].startswith("dev2") and lines[2].endswith("-")
    code, out = _run(capsys, *base, "status", "dev1", "--wait", "0.5")
    fed = json.loads(out)["state"]["federated"]
    assert code == 0 and fed == {"round": 5, "status": "declined",
                                 "reason": "power: on battery", "served": "", "at": 12.0}
    code, out = _run(capsys, *base, "watch", "--duration", "1.5")  # the last row wins
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert code == 0 and out.splitlines()[0].split()[-2:] == ["ROUND", "AT"]
    assert rows["dev1"][-2] == "r5:declined" and rows["dev2"][-2] == "-"

"""``mobizo-bench fleet-learn`` end to end on the session's starter bundle, tiny plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.bench import cli

pytestmark = pytest.mark.runtime

KEYS = {"bytes_per_device_per_round", "federated_fraction_of_centralized",
        "federated_beats_local_on_shared", "dense_fedavg_bytes_per_device_per_round",
        "shared_heldout_loss", "private_heldout_loss", "rounds", "seconds_per_round",
        "dropout_25pct", "targets"}


def test_tiny_fleet_learn_writes_the_issue_keys(starter_bundle: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet.json"
    assert cli.main(["fleet-learn", "--quick", "--bundle", str(starter_bundle), "--rounds",
                     "2", "--steps", "1", "--pool-size", "256", "--fedkseed-pro",
                     "--json", str(out),
                     "--plot", str(tmp_path / "fleet.png")]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= KEYS
    assert doc["plan"]["devices"] == 4 and len(doc["rounds"]) == 2
    assert 0 < doc["bytes_per_device_per_round"] < 18_000
    assert doc["dense_over_federated_bytes"] > 100
    assert doc["replicas_identical"] is True
    assert doc["dropout_25pct"]["rounds_completed"] == 2
    assert all(r["dropped"] == 1 for r in doc["dropout_25pct"]["rounds"])
    assert isinstance(doc["federated_beats_local_on_shared"], bool)
    # one federated fleet, the shipped one (rounds from the global adapter), beside FedAvg's
    assert set(doc["shared_heldout_loss"]) >= {"local", "federated", "federated_global",
                                              "centralized", "dense_fedavg"}
    assert "federated_from_global" not in doc
    pro = doc["fedkseed_pro"]
    assert pro["replicas_identical"] is True and len(pro["rounds"]) == 2
    assert all("shared_loss_fedkseed_pro_global" in r and "shared_loss_dense_fedavg" in r
               for r in doc["rounds"])
    # round 2 carries one importance byte per seed on top of plain federated's message
    assert pro["rounds"][1]["bytes_down"] >= doc["rounds"][1]["bytes_down"] + 256 * 4
    assert "bytes per device per round" in capsys.readouterr().out
    assert (tmp_path / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The Flower App project (fleet_app/), the ServerApp's run config and the round history a
restarted server resumes from, without starting Flower's processes (test_flwr_deployment.py
does that)."""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load_and_validate

from agent.config.federated import FederatedConfig
from agent.errors import ConfigError
from agent.federated import server_app
from agent.federated.client_app import make_client_app
from agent.federated.history import HistoryError, load_history
from agent.federated.inprocess import InProcessGrid, act_as_server
from agent.federated.replay import GlobalAdapter
from agent.federated.run_config import read_run_config
from agent.federated.strategy import SeedStrategy
from tests.federated.fleet_support import BUNDLE, P, analytic_device, run, settings

APP = Path(__file__).resolve().parents[2] / "fleet_app"


def _app_config(**overrides: object) -> dict[str, Any]:
    doc = tomllib.loads((APP / "pyproject.toml").read_text())
    return doc["tool"]["flwr"]["app"]["config"] | overrides


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # flwr's build
def test_the_flower_app_names_importable_server_and_client_apps() -> None:
    config, warnings = load_and_validate(APP / "pyproject.toml", check_module=True)
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "agent.federated.server_app:app",
                          "clientapp": "agent.federated.supernode_app:app"}
    assert "federations" not in config["tool"]["flwr"]  # flwr 1.42 would rewrite the file
    assert warnings == []
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(APP)))
    assert "pyproject.toml" in fab.namelist()  # the operator's connection stays out of it
    assert not [n for n in fab.namelist() if n.endswith("flower-config.toml")]
    connection = tomllib.loads((APP / "flower-config.toml").read_text())["superlink"]
    assert connection["mobizo-local"]["address"] == FederatedConfig().superlink  # the boards'


def test_the_run_config_is_read_with_its_bounds_and_names_a_bad_key() -> None:
    cfg = read_run_config(_app_config(**{"bundle-id": "b1", "excluded-nodes": "7, 9"}))
    assert cfg.settings().bundle_id == "b1" and cfg.excluded() == {7, 9}
    assert cfg.state_path() is None and cfg.settings().fedkseed_pro is False
    with pytest.raises(ConfigError, match="bundle-id"):
        read_run_config(_app_config())  # the shipped file leaves the bundle to the operator
    with pytest.raises(ConfigError, match="pool-size"):
        read_run_config(_app_config(**{"bundle-id": "b1", "pool-size": 0}))
    with pytest.raises(ConfigError, match="excluded-nodes"):
        read_run_config(_app_config(**{"bundle-id": "b1", "excluded-nodes": "7,x"}))
    with pytest.raises(ConfigError, match="learning-rate"):
        read_run_config(_app_config(**{"bundle-id": "b1", "learning-rate": 0.1}))


def _run_config(state: Path, rounds: int) -> dict[str, Any]:
    return _app_config(**{"bundle-id": BUNDLE, "pool-size": 64, "steps": 3, "q": 2,
                          "lr": 0.05, "eps": 0.001, "clip": 50.0, "seed": 11,
                          "num-server-rounds": rounds, "state-file": str(state),
                          "wait-nodes-s": 0.0})


def test_the_deployed_server_app_resumes_from_its_state_file(tmp_path: Path) -> None:
    devices = {n: analytic_device(n) for n in (1, 2, 3)}
    grid = InProcessGrid(make_client_app(lambda ctx: devices[ctx.node_id]), sorted(devices))
    state = tmp_path / "history.json"
    for rounds in (2, 1):  # two runs of the module-level app: a restart between them
        act_as_server(grid.run.run_id)
        server_app.app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=_run_config(state, rounds)))
    assert all(d.rounds_trained == [1, 2, 3] for d in devices.values())  # none declined
    never = {n: analytic_device(n) for n in (1, 2, 3)}
    reference = SeedStrategy(settings())
    run(never, 3, reference)
    stored = load_history(state, reference.fingerprint()).rounds
    assert [(u.pool, u.update) for u in stored] == [
        (u.pool, u.update) for u in reference.history]
    for n, d in devices.items():
        assert d.glob.round == 2 and torch.equal(d.glob.lora_b, never[n].glob.lora_b)
        assert torch.equal(d.personal, never[n].personal)


def test_a_restarted_strategy_goes_on_and_keeps_its_exclusions(tmp_path: Path) -> None:
    state = tmp_path / "history.json"
    devices = {n: analytic_device(n) for n in (1, 2, 3)}
    first = SeedStrategy(settings(), state_file=state, initial=torch.zeros(P))
    run(devices, 2, first)
    first.exclude(3)
    again = SeedStrategy(settings(), state_file=state, initial=torch.zeros(P))
    assert again.next_round == 3 and again.excluded == {3}
    assert again.server is not None and again.server.round == 2  # replayed at start
    grid = run(devices, 1, again)
    assert {m.metadata.dst_node_id for m in grid.received} == {1, 2}
    assert [u.round for u in again.history] == [1, 2, 3]
    assert devices[1].rounds_trained == [1, 2, 3] and devices[3].rounds_trained == [1, 2]


def test_a_state_file_of_another_run_or_a_broken_one_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "history.json"
    run({n: analytic_device(n) for n in (1, 2)}, 2, SeedStrategy(settings(), state_file=state))
    with pytest.raises(HistoryError, match="lr: stored 0.05, now 0.1"):
        SeedStrategy(settings(lr=0.1), state_file=state)
    with pytest.raises(HistoryError, match="bundle_id"):
        SeedStrategy(settings(bundle_id="another"), state_file=state)
    SeedStrategy(settings(steps=5, eps=1e-2), state_file=state)  # not part of the replay
    doc = json.loads(state.read_text())
    doc["rounds"] = doc["rounds"][1:]
    state.write_text(json.dumps(doc))
    with pytest.raises(HistoryError, match="gaps"):
        SeedStrategy(settings(), state_file=state)
    state.write_text("{not json")
    with pytest.raises(HistoryError, match="move it away"):
        SeedStrategy(settings(), state_file=state)


def test_the_history_round_trips_bit_for_bit(tmp_path: Path) -> None:
    state = tmp_path / "history.json"
    strategy = SeedStrategy(settings(), state_file=state)
    run({n: analytic_device(n) for n in (1, 2, 3)}, 3, strategy)
    loaded = load_history(state, strategy.fingerprint()).rounds
    assert loaded == strategy.history
    a, b = GlobalAdapter(torch.zeros(P)), GlobalAdapter(torch.zeros(P))
    a.catch_up(strategy.history)
    b.catch_up(loaded)
    assert torch.equal(a.lora_b, b.lora_b)
    assert not list(tmp_path.glob(".*.tmp"))  # written through agent/io/atomic.py

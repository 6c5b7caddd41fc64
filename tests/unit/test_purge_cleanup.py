"""After a store purge nothing trained on the purged rows stays: run snapshot, checkpoints,
candidates and adapter versions go, and an active adapter trained on them is rolled back.

Real store, registry and run files (the :class:`World` of the lifecycle tests); the trainer
and evaluator are the tiny stand-in children there. Before: a purge deleted the rows only;
the run snapshot (user text, 0600), the trainer's checkpoints and every adapter trained on
the rows stayed, and the active one kept serving.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.core.adapters import INITIAL_VERSION
from agent.services.daemon.purge_cleanup import fallback_version, tainted_versions, trained_on
from agent.services.daemon.snapshot import TRAIN_FILE
from tests.unit.test_run_lifecycle import World, _tick, _until


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.store.close()


def test_a_purge_removes_the_adapter_trained_on_it_and_rolls_back(world: World) -> None:
    runs = world.lifecycle()
    _until(runs, lambda: runs.memory.runs == 1 and runs.run is None)
    assert world.registry.active() == "v0001"
    data_seq = world.registry.manifest("v0001").metrics["data_seq"]
    assert data_seq == world.store.last_seq()  # the data window is recorded with the adapter
    runs.check_purges()
    assert world.registry.active() == "v0001"  # no purge yet: nothing happens
    world.store.purge()
    runs.check_purges()
    assert world.registry.active() == INITIAL_VERSION and world.registry.versions() == []
    assert world.told[-1] == INITIAL_VERSION  # the service serves the initial adapter again
    assert world.reporter.status.active_adapter == INITIAL_VERSION
    assert runs.memory.purge_seen == world.store.purges_after(0)[0]
    world.told.clear()
    runs.check_purges()  # done once per purge
    assert world.told == []


def test_a_purge_during_a_run_discards_its_snapshot_checkpoints_and_candidate(
        world: World) -> None:
    runs = world.lifecycle()
    _tick(runs)  # opens the run (snapshot written) and starts its first burst
    run = runs.run
    assert run is not None and run.data_seq is not None
    files = world.ctx.files
    assert (files.run_dir / TRAIN_FILE).exists()
    files.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (files.checkpoint_dir / "checkpoint.safetensors").write_bytes(b"B trained on the rows")
    files.candidate("run-0000-old").mkdir(parents=True)  # a leftover from a killed daemon
    world.store.purge(before=None)
    runs.check_purges()
    assert runs.run is None and runs.bursts.child is None
    assert not (files.run_dir / TRAIN_FILE).exists()
    assert not files.checkpoint_dir.exists()
    assert not files.candidates_dir.exists() or not any(files.candidates_dir.iterdir())
    assert world.registry.versions() == []
    last = world.reporter.status.last_burst
    assert last is not None and "purged" in last.reason


def _info(version: str, **metrics: object) -> SimpleNamespace:
    return SimpleNamespace(version=version, manifest=SimpleNamespace(metrics=metrics))


def test_which_adapters_saw_purged_rows() -> None:
    infos = [
        _info("v0001", run_id="r1", data_seq=100),   # trained before the purged rows
        _info("v0002", run_id="r2", data_seq=250),   # its window reaches them
        _info("v0003", run_id="r3"),                 # window not recorded: counts as seen
        _info("v0004"),                              # imported by hand: no store data
    ]
    assert tainted_versions(infos, first_purged_seq=200) == {"v0002", "v0003"}
    assert trained_on({"run_id": "r", "data_seq": 199}, 200) is False
    assert trained_on({"run_id": "r", "data_seq": 200}, 200) is True
    history = [INITIAL_VERSION, "v0001", "v0004", "v0002", "v0003"]
    stored = ["v0001", "v0002", "v0003", "v0004"]
    assert fallback_version(history, stored, {"v0002", "v0003"}) == "v0004"
    assert fallback_version(history, stored, set(stored)) == INITIAL_VERSION

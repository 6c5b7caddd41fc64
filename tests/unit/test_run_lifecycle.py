"""The run lifecycle without a daemon: a RunContext over a real store, registry and run files.

The children are the only fake (house style: fakes at the edge): a tiny script stands in for
``python -m agent train`` (it copies the initial adapter as the candidate) and ``... eval``
(it prints the losses the eval gate reads). The store, the registry and the files are real,
in ``tmp_path``; the clock is a fake.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core.command_wire import NoArgs
from agent.core.policy import Decision
from agent.io.adapter_fs import AdapterValidator
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.io.systemd import Notifier
from agent.services.daemon.commands import DaemonHandlers, PauseRequest, TrainNowRequest
from agent.services.daemon.lifecycle import RunLifecycle
from agent.services.daemon.run_context import ChildLauncher, RunContext
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.status import StatusReporter
from agent.services.daemon.wishes import UserWishes
from agent.training.sample_data import constant_response_rows
from tests.io.tiny_bundle import make_bundle

FAKE_CHILD = """\
import json, shutil, sys
argv = sys.argv[1:]
if argv[:3] == ["-m", "agent", "train"]:
    job = json.load(open(argv[argv.index("--job") + 1]))
    shutil.copytree(job["init_adapter"], job["out"], dirs_exist_ok=True)
    open(job["metrics"], "a").write(json.dumps({"step": job["steps"], "loss": 0.5}) + "\\n")
elif argv[:3] == ["-m", "agent", "eval"]:
    print(json.dumps({"losses": {argv[3]: 1.0, argv[4]: 2.0}, "examples": 6}))
else:
    sys.exit(3)
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def _decision(train: bool) -> Decision:
    return Decision(train=train, action="start" if train else "wait",
                    reason="constraints hold" if train else "on battery")


class World:
    """A RunContext over real adapters in ``tmp``; ``allow`` is what the policy says."""

    def __init__(self, tmp: Path, examples: int = 24) -> None:
        bundle = make_bundle(tmp / "bundle")
        state = tmp / "state"
        self.cfg = AgentConfig.model_validate({
            "paths": {"state_dir": str(state)},
            "service": {"bundle_dir": str(bundle)},
            "data": {"heldout_share": 0.3, "min_heldout_examples": 2},
            "training": {"steps_per_burst": 3},
        })
        state.mkdir(parents=True)
        self.store = InteractionStore(self.cfg.store_path)
        rows = [dict(r, id=f"ex-{k:03d}") for k, r in
                enumerate(constant_response_rows(examples, seed=1))]
        if rows:
            self.store.import_rows(rows)
        self.registry = AdapterRegistry(self.cfg.registry_dir,
                                        validator=AdapterValidator(bundle), keep=3)
        fake = tmp / "fake-python"
        fake.write_text(f"#!{sys.executable}\n{FAKE_CHILD}")
        fake.chmod(0o755)
        self.clock = Clock()
        self.allow = True
        self.told: list[str] = []
        self.wishes = UserWishes()
        files = RunFiles(state, self.cfg.paths.checkpoint_dir)
        self.reporter = StatusReporter(state, Notifier(None), self.clock,
                                       lambda: self.registry.active() or "initial")
        self.ctx = RunContext(
            config=lambda: self.cfg, store=self.store, registry=self.registry, files=files,
            clock=self.clock, launcher=ChildLauncher(python=str(fake)),
            tell_service=self._tell, reporter=self.reporter,
            decide=lambda training: _decision(self.allow), wishes=self.wishes)

    def _tell(self, version: str) -> str | None:
        self.told.append(version)
        return None

    def lifecycle(self) -> RunLifecycle:
        runs = RunLifecycle(self.ctx)
        runs.recover()
        return runs


def _tick(runs: RunLifecycle) -> None:
    """What the daemon's main loop does each tick."""
    if runs.bursts.child is not None:
        runs.bursts.follow()
    elif runs.evaluation.child is not None:
        runs.follow_eval()
    else:
        runs.consider_start()


def _until(runs: RunLifecycle, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, runs.reporter.status
        _tick(runs)
        time.sleep(0.02)


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.store.close()


def test_a_run_trains_evaluates_and_publishes_without_a_daemon(world: World) -> None:
    runs = world.lifecycle()
    _until(runs, lambda: runs.memory.runs == 1 and runs.run is None)
    status = world.reporter.status
    assert status.last_burst is not None and status.last_burst.outcome == "published", status
    assert world.registry.active() == "v0001" and world.told == ["v0001"]
    assert runs.memory.last_burst_end == world.clock.t and runs.memory.cursor > 0
    candidates = world.ctx.files.candidates_dir
    assert not candidates.exists() or not any(candidates.iterdir())  # the candidate went


def test_the_policy_saying_no_leaves_nothing_started(world: World) -> None:
    world.allow = False
    runs = world.lifecycle()
    _tick(runs)
    assert runs.run is None and runs.bursts.child is None
    assert world.reporter.status.state == "waiting" and "on battery" in world.reporter.status.reason


def test_too_little_data_waits_and_opens_no_run(tmp_path: Path) -> None:
    w = World(tmp_path, examples=2)
    try:
        runs = w.lifecycle()
        _tick(runs)
        assert runs.run is None and runs.memory.runs == 0
        assert "not enough data" in w.reporter.status.reason
        assert w.reporter.status.blocked_by == ("min_examples",)
    finally:
        w.store.close()


def test_a_restarted_lifecycle_resumes_the_run_from_its_files(world: World) -> None:
    first = world.lifecycle()
    world.allow = True
    _tick(first)  # opens the run and starts its first burst
    assert first.run is not None
    run_id = first.run.run_id
    first.stop()  # the daemon stops: the burst ends, the run stays on disk
    second = world.lifecycle()
    assert second.run is not None and second.run.run_id == run_id
    _until(second, lambda: second.run is None)
    assert world.registry.active() == "v0001"


def test_handlers_change_the_wishes_the_run_code_reads(world: World) -> None:
    runs = world.lifecycle()
    handlers = DaemonHandlers(wishes=world.wishes, runs=runs, reporter=world.reporter,
                              registry=world.registry, tell_service=world._tell,
                              status_document=lambda: {"state": "x"})
    handlers.pause(PauseRequest())
    assert world.wishes.paused == "paused by the user"
    reply = handlers.train_now(TrainNowRequest(skip=["power"]))
    assert world.wishes.paused is None and world.wishes.manual is not None
    assert world.wishes.manual.skip == {"power", "min_examples", "cooldown"}
    assert "power" in reply["message"]
    assert handlers.resume(NoArgs())["message"] == "was not paused"
    _until(runs, lambda: runs.memory.runs == 1 and runs.run is None)
    assert world.wishes.manual is None  # a manual run ends with its run


def test_the_lr_schedule_runs_on_across_runs(world: World) -> None:
    """Each finished run adds its steps to the memory; the next run starts there on the
    [training] total_steps schedule, and its job document says so."""
    from agent.services.daemon.children import train_job
    from agent.services.daemon.runstate import DaemonMemory

    runs = world.lifecycle()
    _until(runs, lambda: runs.memory.runs == 1 and runs.run is None)
    assert runs.memory.trained_steps == 3  # steps_per_burst of the first run
    assert world.ctx.files.read_memory().trained_steps == 3  # written to daemon.json
    world.wishes.manual = None
    handlers = DaemonHandlers(wishes=world.wishes, runs=runs, reporter=world.reporter,
                              registry=world.registry, tell_service=world._tell,
                              status_document=lambda: {"state": "x"})
    handlers.train_now(TrainNowRequest(skip=["power"]))
    _until(runs, lambda: runs.run is not None)
    run = runs.run
    assert run is not None and run.schedule_offset == 3
    assert train_job(world.cfg, run, world.ctx.files).schedule_offset == 3
    _until(runs, lambda: runs.memory.runs == 2 and runs.run is None)
    assert runs.memory.trained_steps == 6
    # a daemon.json written before the field existed still loads
    assert DaemonMemory.model_validate_json('{"cursor": 4, "runs": 2}').trained_steps == 0

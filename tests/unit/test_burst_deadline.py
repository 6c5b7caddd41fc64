"""The daemon's hard deadline on a trainer: ``max_seconds_per_burst + stop_grace_s``.

A trainer stops itself at ``max_seconds_per_burst``; one that hangs, ignores SIGTERM or is
SIGSTOPped (a debugger, a job-control accident) would otherwise hold the device's memory and
the run forever. The lifecycle runs against a real store and registry (see
:mod:`tests.unit.test_run_lifecycle`); the trainer is a real process that never ends.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from agent.services.daemon.lifecycle import RunLifecycle
from tests.unit.test_run_lifecycle import World, _tick

HANGING_CHILD = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to the polite stop
while True:
    time.sleep(1)
"""


def _hanging_world(tmp_path: Path) -> World:
    world = World(tmp_path)
    (tmp_path / "fake-python").write_text(f"#!{sys.executable}\n{HANGING_CHILD}")
    world.cfg = world.cfg.model_copy(update={
        "training": world.cfg.training.model_copy(update={"max_seconds_per_burst": 0.5}),
        "daemon": world.cfg.daemon.model_copy(update={"stop_grace_s": 1.0}),
    })
    return world


def _until_ended(runs: RunLifecycle, timeout: float) -> float:
    t0 = time.monotonic()
    while runs.bursts.child is not None:
        assert time.monotonic() - t0 < timeout, runs.reporter.status
        _tick(runs)
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_sigstopped_trainer_is_killed_at_its_deadline(tmp_path: Path) -> None:
    world = _hanging_world(tmp_path)
    try:
        runs = world.lifecycle()
        runs.consider_start()
        child = runs.bursts.child
        assert child is not None and child.pid is not None
        time.sleep(0.2)  # let the script install its SIG_IGN
        os.kill(child.pid, signal.SIGSTOP)
        took = _until_ended(runs, timeout=20.0)
        assert child.returncode == -signal.SIGKILL
        assert 1.5 <= took + 0.2 < 10.0, took  # not before 0.5 + 1.0 s, not long after
        last = world.reporter.status.last_burst
        assert last is not None and last.outcome == "failed"
        assert "ran past its deadline" in last.reason, last.reason
        assert runs.run is not None  # kept: the next burst resumes from its checkpoint
    finally:
        world.store.close()


def test_a_trainer_deaf_to_sigterm_is_killed_too(tmp_path: Path) -> None:
    world = _hanging_world(tmp_path)
    try:
        runs = world.lifecycle()
        runs.consider_start()
        child = runs.bursts.child
        assert child is not None
        time.sleep(0.2)
        runs.bursts.stop_burst("on battery")  # ignored by the child
        _until_ended(runs, timeout=20.0)
        assert child.returncode == -signal.SIGKILL
    finally:
        world.store.close()


def test_the_cooldown_counts_on_the_monotonic_clock(tmp_path: Path) -> None:
    """An NTP step (1970 -> now) or a clock set back neither ends nor stretches a cooldown."""
    world = World(tmp_path)
    try:
        bursts = world.lifecycle().bursts
        assert bursts.seconds_since_end(None) is None
        ended = world.clock.t - 100.0  # a burst before this process started: placed once
        assert 100.0 <= bursts.seconds_since_end(ended) < 105.0  # type: ignore[operator]
        world.clock.t += 56 * 365 * 86400.0  # the first NTP sync of a board without RTC
        assert 100.0 <= bursts.seconds_since_end(ended) < 105.0  # type: ignore[operator]
        world.clock.t = 0.0  # set back before the burst's end
        assert 100.0 <= bursts.seconds_since_end(ended) < 105.0  # type: ignore[operator]
        fresh = world.lifecycle().bursts  # after a restart with the clock still behind
        assert fresh.seconds_since_end(ended) < 1.0  # type: ignore[operator]  # from now
    finally:
        world.store.close()

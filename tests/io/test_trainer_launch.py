"""trainer_launch: the command line of a training burst, and what the child applies to itself."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from agent.io.children.launch import (
    MIB,
    TrainerLimits,
    build_trainer_launch,
    scope_unit_name,
)

TRAINER = ["/opt/mobizo-agent/venv/bin/python", "-m", "agent.training.burst", "--job", "j.json"]


def test_scope_mode_puts_the_burst_in_the_trainer_slice_with_its_caps() -> None:
    limits = TrainerLimits(memory_max_mb=1024, nice=19, cpu_weight="idle", io_weight=10)
    plan = build_trainer_launch(TRAINER, limits, systemd_run="/usr/bin/systemd-run", burst_id="b7")

    assert plan.mode == "systemd-scope"
    assert plan.unit == "mobizo-trainer-b7.scope"
    argv = list(plan.argv)
    assert argv[0] == "/usr/bin/systemd-run"
    assert argv[argv.index("--") + 1:] == TRAINER  # the trainer's own argv, untouched
    opts = argv[1:argv.index("--")]
    for expected in ("--scope", "--collect", "--slice=mobizo-trainer.slice", "--nice=19",
                     "--unit=mobizo-trainer-b7.scope", "--property=MemoryMax=1024M",
                     "--property=MemorySwapMax=0", "--property=CPUWeight=idle",
                     "--property=IOWeight=10"):
        assert expected in opts
    # The cgroup caps resident memory; RLIMIT_AS would only misfire on virtual reservations.
    assert plan.rlimit_as_bytes is None
    assert plan.nice == 19 and plan.sched_idle


def test_fork_mode_caps_address_space_and_uses_the_idle_io_class() -> None:
    limits = TrainerLimits(memory_max_mb=512, address_space_headroom_mb=256, cpu_weight=5)
    plan = build_trainer_launch(TRAINER, limits, systemd_run=None, burst_id="x",
                                ionice="/usr/bin/ionice")
    assert plan.mode == "fork" and plan.unit is None
    assert list(plan.argv) == ["/usr/bin/ionice", "-c", "3", *TRAINER]
    assert plan.rlimit_as_bytes == (512 + 256) * MIB
    assert plan.oom_score_adj == 1000

    bare = build_trainer_launch(TRAINER, limits, systemd_run=None, burst_id="x")
    assert list(bare.argv) == TRAINER


def test_unit_names_are_sanitised() -> None:
    assert scope_unit_name("2026-11-28T14:00 #3") == "mobizo-trainer-2026-11-28T14_00__3.scope"
    assert scope_unit_name("") == "mobizo-trainer-burst.scope"


@pytest.mark.parametrize("kwargs", [
    {"memory_max_mb": 10},
    {"memory_max_mb": 512, "nice": -5},
    {"memory_max_mb": 512, "cpu_weight": 0},
    {"memory_max_mb": 512, "cpu_weight": "low"},
    {"memory_max_mb": 512, "io_weight": 20000},
    {"memory_max_mb": 512, "slice": "mobizo-trainer"},
])
def test_bad_limits_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainerLimits(**kwargs)


def test_empty_trainer_argv_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_trainer_launch([], TrainerLimits(memory_max_mb=512), systemd_run=None, burst_id="b")


REPORT = (
    "import json, os, resource; print(json.dumps({'nice': os.getpriority(os.PRIO_PROCESS, 0), "
    "'policy': os.sched_getscheduler(0), 'as': resource.getrlimit(resource.RLIMIT_AS)[0], "
    "'oom': int(open('/proc/self/oom_score_adj').read())}))"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling classes")
def test_the_child_lowers_itself_before_exec() -> None:
    parent_policy = os.sched_getscheduler(0)
    limits = TrainerLimits(memory_max_mb=768, address_space_headroom_mb=1024)
    plan = build_trainer_launch([sys.executable, "-c", REPORT], limits, systemd_run=None,
                                burst_id="t")
    out = subprocess.run(list(plan.argv), preexec_fn=plan.preexec(), capture_output=True,
                         text=True, check=True, timeout=60)
    seen = json.loads(out.stdout)
    assert seen["nice"] == 19
    assert seen["policy"] == os.SCHED_IDLE
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    expected = (768 + 1024) * MIB
    assert seen["as"] == (expected if hard == resource.RLIM_INFINITY else min(hard, expected))
    assert seen["oom"] == 1000
    assert os.sched_getscheduler(0) == parent_policy  # only the child was lowered



def test_the_wrapper_lowers_then_execs_without_preexec_fn() -> None:
    """The thread-safe path: python -m agent.io.children.lower_exec ... -- PROGRAM."""
    limits = TrainerLimits(memory_max_mb=640, address_space_headroom_mb=1024)
    plan = build_trainer_launch([sys.executable, "-c", REPORT], limits, systemd_run=None,
                                burst_id="w")
    out = subprocess.run(list(plan.wrapped_argv()), capture_output=True, text=True, check=True,
                         timeout=60)
    seen = json.loads(out.stdout)
    assert seen["nice"] == 19 and seen["policy"] == os.SCHED_IDLE and seen["oom"] == 1000
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    expected = (640 + 1024) * MIB
    assert seen["as"] == (expected if hard == resource.RLIM_INFINITY else min(hard, expected))


def test_wrapper_keeps_systemd_run_in_front_in_scope_mode() -> None:
    plan = build_trainer_launch(TRAINER, TrainerLimits(memory_max_mb=512),
                                systemd_run="/usr/bin/systemd-run", burst_id="s")
    wrapped = plan.wrapped_argv("/usr/bin/python3")
    assert wrapped[:3] == ("/usr/bin/python3", "-m", "agent.io.children.lower_exec")
    assert "--rlimit-as" not in " ".join(wrapped)  # the cgroup caps memory in scope mode
    assert wrapped[wrapped.index("--") + 1:] == plan.argv

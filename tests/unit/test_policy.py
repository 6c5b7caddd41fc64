"""The scheduling policy: table tests from snapshots, hysteresis, train-now, reasons."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

import pytest

from agent.config.constraints import ConstraintsConfig
from agent.core.policy import (
    DeviceSnapshot,
    PolicyState,
    PowerReading,
    ThermalReading,
    TrainNow,
    decide,
    in_hours,
)

NOON = datetime(2026, 11, 28, 12, 0)
LIMITS = ConstraintsConfig()  # start: battery 80 %, idle 10 min, < 60 °C, >= 512 MiB, 8 examples

MAINS = PowerReading("mains", reason="no battery: mains-powered")
LAPTOP_AC = PowerReading("mains", charging=True, battery_pct=95, has_battery=True)
ON_BATTERY = PowerReading("battery", battery_pct=54, has_battery=True)
UNKNOWN_POWER = PowerReading("unknown", battery_pct=90, has_battery=True, reason="unclear")


def snap(**kw: object) -> DeviceSnapshot:
    base = DeviceSnapshot(
        power=MAINS,
        thermal=(ThermalReading("thermal_zone0", "cpu-thermal", 41.0),),
        load_1m=0.2, cpu_count=4, mem_available_mb=2048, user_idle_s=12 * 60,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


READY = PolicyState(training=False, new_examples=20, seconds_since_last_burst=None)
RUNNING = PolicyState(training=True, new_examples=0)


# (name, snapshot, state, train?, reason must contain)
TABLE = [
    ("all good on mains", snap(), READY, True,
     "training allowed: on mains, idle 12 min, 41 °C"),
    ("laptop charging", snap(power=LAPTOP_AC), READY, True, "battery 95%"),
    ("on battery", snap(power=ON_BATTERY), READY, False,
     "waiting: on battery 54% < 80%"),
    ("power unknown", snap(power=UNKNOWN_POWER), READY, False, "power source unknown"),
    ("user active", snap(user_idle_s=120.0), READY, False,
     "user active 2 min ago (< 10 min idle)"),
    ("no request ever", snap(user_idle_s=math.inf), READY, True, "no request yet"),
    ("idle unknown", snap(user_idle_s=None), READY, False, "user idle time unknown"),
    ("hot", snap(thermal=(ThermalReading("z0", "cpu-thermal", 63.0),)), READY, False,
     "63 °C >= 60 °C"),
    ("hottest zone counts", snap(thermal=(ThermalReading("z0", "a", 40.0),
                                          ThermalReading("z1", "b", 61.0))), READY, False,
     "61 °C >= 60 °C"),
    ("no thermal sensor", snap(thermal=()), READY, True, "no thermal sensor"),
    ("configured zone unreadable", snap(thermal=(ThermalReading("z0", "cpu", None, "gone"),)),
     READY, False, "temperature unknown"),
    ("configured zones missing", snap(thermal=(), thermal_expected=True), READY, False,
     "temperature unknown"),
    ("low memory", snap(mem_available_mb=300.0), READY, False, "300 MiB free < 512 MiB"),
    ("memory unknown", snap(mem_available_mb=None), READY, False, "available memory unknown"),
    ("few examples", snap(), PolicyState(new_examples=3), False, "3 new examples < 8"),
    ("cooldown", snap(), PolicyState(new_examples=20, seconds_since_last_burst=60), False,
     "last burst 60 s ago (< 5 min)"),
    ("cooled down", snap(), PolicyState(new_examples=20, seconds_since_last_burst=600), True,
     "training allowed"),
    ("several reasons at once", snap(power=ON_BATTERY, mem_available_mb=100.0), READY, False,
     "waiting: on battery 54% < 80%; 100 MiB free < 512 MiB"),
    ("on battery above the floor", snap(power=replace(ON_BATTERY, battery_pct=90.0)), READY,
     False, "waiting: on battery, not charging"),
]


@pytest.mark.parametrize(("name", "snapshot", "state", "train", "reason"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_decision_table(
    name: str, snapshot: DeviceSnapshot, state: PolicyState, train: bool, reason: str
) -> None:
    decision = decide(snapshot, state, LIMITS, NOON)
    assert decision.train is train, decision.reason
    assert reason in decision.reason
    assert decision.action == ("start" if train else "wait")
    assert bool(decision.blocked_by) is (not train)


def test_charging_not_required() -> None:
    limits = LIMITS.model_copy(update={"require_charging_or_mains": False})
    high = replace(ON_BATTERY, battery_pct=90.0)
    decision = decide(snap(power=high), READY, limits, NOON)
    assert decision.train and "on battery (allowed)" in decision.reason
    assert not decide(snap(power=ON_BATTERY), READY, limits, NOON).train  # the floor still holds


@pytest.mark.parametrize(("value", "start_ok", "continue_ok"), [
    # (reading, may start?, may a running burst continue?) — start 80/stop 70, start 60/stop 70
    ({"power": replace(LAPTOP_AC, battery_pct=85.0)}, True, True),
    ({"power": replace(LAPTOP_AC, battery_pct=75.0)}, False, True),
    ({"power": replace(LAPTOP_AC, battery_pct=65.0)}, False, False),
    ({"thermal": (ThermalReading("z", "t", 59.0),)}, True, True),
    ({"thermal": (ThermalReading("z", "t", 65.0),)}, False, True),
    ({"thermal": (ThermalReading("z", "t", 70.0),)}, False, False),
    ({"mem_available_mb": 600.0}, True, True),
    ({"mem_available_mb": 400.0}, False, True),
    ({"mem_available_mb": 200.0}, False, False),
])
def test_hysteresis(value: dict[str, object], start_ok: bool, continue_ok: bool) -> None:
    snapshot = snap(**value)
    assert decide(snapshot, READY, LIMITS, NOON).train is start_ok
    running = decide(snapshot, RUNNING, LIMITS, NOON)
    assert running.train is continue_ok
    assert running.action == ("continue" if continue_ok else "stop")
    if not continue_ok:
        assert running.reason.startswith("stopping: ")


def test_no_flapping_over_a_temperature_ramp() -> None:
    """A burst that starts at 59 °C keeps going while it warms to 69 °C, stops at 70 °C, and
    does not restart until the device is back under 60 °C."""
    training, changes = False, 0
    ramp = [59, 62, 65, 69, 70, 68, 64, 61, 59.5]
    for temp in ramp:
        state = PolicyState(training=training, new_examples=20)
        decision = decide(snap(thermal=(ThermalReading("z", "t", temp),)), state, LIMITS, NOON)
        changes += decision.train != training
        training = decision.train
    assert changes == 3  # start at 59, stop at 70, restart at 59.5


def test_user_returning_stops_a_burst() -> None:
    assert not decide(snap(user_idle_s=3.0), RUNNING, LIMITS, NOON).train
    relaxed = LIMITS.model_copy(update={"stop_on_user_activity": False})
    assert decide(snap(user_idle_s=3.0), RUNNING, relaxed, NOON).train


def test_min_examples_and_cooldown_gate_only_a_start() -> None:
    state = PolicyState(training=True, new_examples=0, seconds_since_last_burst=1.0)
    assert decide(snap(), state, LIMITS, NOON).train


def test_allowed_hours_start_and_stop() -> None:
    limits = LIMITS.model_copy(update={"allowed_hours": "23:00-06:00"})
    night, day = datetime(2026, 1, 1, 2, 30), datetime(2026, 1, 1, 7, 0)
    assert decide(snap(), READY, limits, night).train
    decision = decide(snap(), READY, limits, day)
    assert not decision.train and "outside allowed hours 23:00-06:00 (now 07:00)" in decision.reason
    assert not decide(snap(), RUNNING, limits, day).train  # a running burst stops too


@pytest.mark.parametrize(("window", "hhmm", "inside"), [
    ((60, 360), (0, 59), False), ((60, 360), (1, 0), True), ((60, 360), (6, 0), False),
    ((1380, 360), (23, 30), True), ((1380, 360), (5, 59), True), ((1380, 360), (12, 0), False),
    (None, (12, 0), True),
])
def test_in_hours(window: tuple[int, int] | None, hhmm: tuple[int, int], inside: bool) -> None:
    assert in_hours(window, datetime(2026, 1, 1, *hhmm)) is inside


def test_load_per_core() -> None:
    limits = LIMITS.model_copy(update={"max_load_per_core": 0.5})
    assert decide(snap(load_1m=1.0, cpu_count=4), READY, limits, NOON).train
    decision = decide(snap(load_1m=3.0, cpu_count=4), READY, limits, NOON)
    assert not decision.train and "load 0.75/core >= 0.5" in decision.reason


def test_train_now_skips_chosen_constraints() -> None:
    blocked = snap(power=ON_BATTERY, user_idle_s=5.0)
    limits = LIMITS.model_copy(update={"allowed_hours": "01:00-02:00"})
    state = PolicyState(new_examples=0, seconds_since_last_burst=1.0)
    assert not decide(blocked, state, limits, NOON).train
    decision = decide(blocked, state, limits, NOON, TrainNow())
    assert decision.train and decision.action == "start"
    assert decision.reason.startswith("training now (manual)")
    assert "skipped: power, battery, idle, hours, min_examples, cooldown" in decision.reason
    only_idle = decide(blocked, state, limits, NOON, TrainNow(skip=frozenset({"idle"})))
    assert not only_idle.train and set(only_idle.blocked_by) == {
        "power", "battery", "hours", "min_examples", "cooldown"}


def test_train_now_from_request() -> None:
    waiting_for_data = PolicyState(new_examples=0, seconds_since_last_burst=1.0)
    plain = TrainNow.from_request(ignore_constraints=False)
    assert decide(snap(), waiting_for_data, LIMITS, NOON, plain).train
    assert not decide(snap(power=ON_BATTERY), waiting_for_data, LIMITS, NOON, plain).train
    forced = TrainNow.from_request(ignore_constraints=True, requested_by="fleet")
    assert decide(snap(power=ON_BATTERY), waiting_for_data, LIMITS, NOON, forced).train


def test_train_now_never_skips_thermal_or_memory() -> None:
    hot = snap(thermal=(ThermalReading("z", "t", 80.0),), mem_available_mb=10.0)
    decision = decide(hot, READY, LIMITS, NOON, TrainNow())
    assert not decision.train and set(decision.blocked_by) == {"thermal", "memory"}
    for guard in ("thermal", "memory"):
        with pytest.raises(ValueError, match="never|cannot skip"):
            TrainNow(skip=frozenset({guard}))
    with pytest.raises(ValueError, match="unknown"):
        TrainNow(skip=frozenset({"gravity"}))


def test_daemon_side_modules_do_not_import_ml_stacks() -> None:
    """The daemon must stay light (< 80 MB RSS): config, sensors, policy, status, notify."""
    import subprocess
    import sys

    code = (
        "import sys, agent.config, agent.config.show, agent.config.detect, agent.io.sysfs, "
        "agent.io.systemd, agent.core.policy, agent.core.status, agent.cli.status, "
        "agent.cli.config_cmd, agent.cli.detect_board\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'executorch', 'numpy', 'transformers', 'torchao'})\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == ""


def test_each_check_is_a_pure_helper_with_its_own_reason():
    """decide() composes one helper per check; each can be asked on its own."""
    from agent.core.policy import (
        battery_check,
        cooldown_check,
        hours_check,
        load_check,
        memory_check,
        min_examples_check,
    )

    assert battery_check(MAINS, LIMITS, running=False) is None  # no battery: nothing to check
    low = battery_check(ON_BATTERY, LIMITS, running=False)
    assert low is not None and not low.ok and low.text == "battery 54% < 80%"
    assert memory_check(None, LIMITS, running=True).text == "available memory unknown"
    assert load_check(snap(load_1m=9.0), LIMITS, running=True) is None  # start-only gate
    assert min_examples_check(RUNNING, LIMITS) is None and cooldown_check(RUNNING, LIMITS) is None
    assert hours_check(LIMITS, NOON) is None  # no window configured
    night = hours_check(LIMITS.model_copy(update={"allowed_hours": "23:00-06:00"}), NOON)
    assert night is not None and not night.ok and "now 12:00" in night.text

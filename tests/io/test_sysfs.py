"""Sensors on fake sysfs/procfs trees in tmp_path (the only fake: the hardware edge)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.io.sysfs import SysfsSensors, idle_since, read_power, read_thermal

MEMINFO = """\
MemTotal:        3884136 kB
MemFree:          212340 kB
MemAvailable:    2097152 kB
Buffers:           53312 kB
"""


class Tree:
    """A fake device: files under root/sys and root/proc."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "proc"
        self.proc.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def supply(self, name: str, **files: str) -> None:
        for key, value in files.items():
            self.write(f"sys/class/power_supply/{name}/{key}", value + "\n")

    def zone(self, index: int, kind: str, millideg: str) -> None:
        self.write(f"sys/class/thermal/thermal_zone{index}/type", kind + "\n")
        self.write(f"sys/class/thermal/thermal_zone{index}/temp", millideg + "\n")

    def sensors(self, **kw: object) -> SysfsSensors:
        return SysfsSensors(self.root, self.proc, cpu_count=4, **kw)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path)
    t.write("proc/loadavg", "0.52 0.40 0.31 1/234 5678\n")
    t.write("proc/meminfo", MEMINFO)
    return t


def test_raspberry_pi_like_board(tree: Tree) -> None:
    """No power_supply class at all, one cpu-thermal zone: mains-powered, 47.2 °C."""
    tree.zone(0, "cpu-thermal", "47236")
    snap = tree.sensors(idle_source=lambda: 300.0).snapshot()
    assert snap.power.source == "mains" and not snap.power.has_battery
    assert "no battery" in snap.power.reason
    assert snap.max_temp_c == pytest.approx(47.236)
    assert snap.load_1m == 0.52 and snap.cpu_count == 4
    assert snap.mem_available_mb == pytest.approx(2048.0)
    assert snap.user_idle_s == 300.0
    assert snap.problems == ()


def test_laptop_on_ac_charging(tree: Tree) -> None:
    tree.supply("AC", type="Mains", online="1")
    tree.supply("BAT0", type="Battery", status="Charging", capacity="71")
    power = read_power(tree.root)
    assert power.source == "mains" and power.charging and power.battery_pct == 71
    assert [s.name for s in power.supplies] == ["AC", "BAT0"]


def test_laptop_unplugged(tree: Tree) -> None:
    tree.supply("AC", type="Mains", online="0")
    tree.supply("BAT0", type="Battery", status="Discharging", capacity="54")
    power = read_power(tree.root)
    assert power.source == "battery" and not power.charging and power.battery_pct == 54


def test_usb_power_and_charge_threshold(tree: Tree) -> None:
    # A battery held at a charge threshold reports "Not charging" while on external power.
    tree.supply("ucsi-source-psy-USBC000:001", type="USB", online="1")
    tree.supply("BAT1", type="Battery", status="Not charging", capacity="80")
    power = read_power(tree.root)
    assert power.source == "mains" and power.charging


def test_two_batteries_averaged_and_peripheral_battery_ignored(tree: Tree) -> None:
    tree.supply("BAT0", type="Battery", status="Discharging", capacity="90")
    tree.supply("BAT1", type="Battery", status="Discharging", capacity="70")
    tree.supply("hidpp_battery_0", type="Battery", status="Discharging", capacity="5",
                scope="Device")
    power = read_power(tree.root)
    assert power.source == "battery" and power.battery_pct == 80


def test_named_supplies_only(tree: Tree) -> None:
    tree.supply("AC", type="Mains", online="0")
    tree.supply("BAT0", type="Battery", status="Discharging", capacity="54")
    tree.supply("BAT9", type="Battery", status="Charging", capacity="99")
    assert read_power(tree.root, ["AC", "BAT0"]).source == "battery"
    assert read_power(tree.root, "auto").source == "mains"
    missing = read_power(tree.root, ["ADP1"])
    assert missing.source == "mains" and "configured supplies missing: ADP1" in missing.reason


@pytest.mark.parametrize(("files", "expected_problem"), [
    ({"type": "Battery", "status": "Discharging", "capacity": "lots"}, "garbled"),
    ({"type": "Battery", "status": "Discharging", "capacity": "250"}, "out of range"),
    ({"type": "Battery", "capacity": "50"}, "status missing"),
])
def test_garbled_battery_is_unknown_not_a_crash(
    tree: Tree, files: dict[str, str], expected_problem: str
) -> None:
    tree.supply("BAT0", **files)
    snap = tree.sensors().snapshot()
    reading = snap.power.supplies[0]
    assert expected_problem in reading.problem
    assert any(expected_problem in p for p in snap.problems)
    if "status" not in files:
        assert snap.power.source == "unknown"


def test_unreadable_supply_type_is_unknown(tree: Tree) -> None:
    (tree.root / "sys/class/power_supply/weird").mkdir(parents=True)
    power = read_power(tree.root)
    assert power.source == "unknown" and "weird" in power.reason


def test_thermal_zones_by_type_or_name_and_bad_values(tree: Tree) -> None:
    tree.zone(0, "acpitz", "27800")
    tree.zone(1, "x86_pkg_temp", "55000")
    tree.zone(2, "iwlwifi_1", "-273000")  # a disabled sensor
    tree.zone(10, "cpu-thermal", "garbage")
    zones = read_thermal(tree.root)
    assert [z.zone for z in zones] == ["thermal_zone0", "thermal_zone1", "thermal_zone2",
                                       "thermal_zone10"]
    assert zones[2].temp_c is None and "out of range" in zones[2].problem
    assert zones[3].temp_c is None and "garbled" in zones[3].problem
    assert [z.zone for z in read_thermal(tree.root, ["x86_pkg_temp", "thermal_zone0"])] == [
        "thermal_zone0", "thermal_zone1"]
    snap = tree.sensors().snapshot()
    assert snap.max_temp_c == 55.0  # the hottest readable zone


def test_configured_zone_missing_is_reported(tree: Tree) -> None:
    tree.zone(0, "acpitz", "30000")
    snap = tree.sensors(thermal_zones=["cpu-thermal"]).snapshot()
    assert snap.thermal == () and snap.thermal_expected
    assert any("cpu-thermal" in p for p in snap.problems)


def test_missing_and_garbled_procfs(tree: Tree) -> None:
    tree.write("proc/loadavg", "\n")
    tree.write("proc/meminfo", "MemTotal: 100 kB\n")
    snap = tree.sensors().snapshot()
    assert snap.load_1m is None and snap.mem_available_mb is None
    assert any(p.startswith("load:") for p in snap.problems)
    assert any("no MemAvailable" in p for p in snap.problems)
    empty = SysfsSensors(tree.root / "nothing", tree.root / "nothing/proc").snapshot()
    assert empty.power.source == "mains" and empty.mem_available_mb is None
    assert any("missing" in p for p in empty.problems)


def test_idle_source_failures_are_unknown(tree: Tree) -> None:
    def broken() -> float:
        raise ConnectionRefusedError("service down")

    assert tree.sensors(idle_source=broken).snapshot().user_idle_s is None
    assert tree.sensors(idle_source=lambda: None).snapshot().user_idle_s is None
    assert tree.sensors().snapshot().user_idle_s is None


def test_idle_since_clock() -> None:
    now = [1000.0]
    mono = [5.0]
    last: list[float | None] = [None]
    idle = idle_since(lambda: last[0], lambda: now[0], lambda: mono[0])
    assert idle() == math.inf
    last[0] = 940.0
    assert idle() == 60.0


def test_idle_time_ignores_wall_clock_steps() -> None:
    """An NTP step (1970 -> now) or a clock set back neither fakes nor hides idleness."""
    now, mono = [1_000.0], [5.0]
    last: list[float | None] = [990.0]
    idle = idle_since(lambda: last[0], lambda: now[0], lambda: mono[0])
    assert idle() == 10.0
    now[0], mono[0] = 1_800_000_000.0, 7.0  # synced: 56 years "later", 2 s really
    assert idle() == 12.0
    now[0], mono[0] = 500.0, 8.0  # set back before the request
    assert idle() == 13.0
    last[0], now[0] = 500.0, 500.0  # a new request: idle again from zero
    assert idle() == 0.0
    mono[0] = 9.5
    assert idle() == 1.5


def test_from_config(tree: Tree, tmp_path: Path) -> None:
    from agent.config import AgentConfig

    tree.zone(0, "cpu-thermal", "40000")
    tree.zone(1, "gpu-thermal", "80000")
    cfg = AgentConfig.model_validate({
        "device": {"sysfs_root": str(tree.root), "procfs_root": str(tree.proc)},
        "constraints": {"thermal_zones": ["cpu-thermal"]},
        "paths": {"state_dir": str(tmp_path / "state")},
    })
    snap = SysfsSensors.from_config(cfg, idle_source=lambda: 1.0).snapshot()
    assert snap.max_temp_c == 40.0


def test_flipping_the_charger_file_is_seen_on_the_next_read(tree: Tree) -> None:
    """What the integration test does mid-burst: unplug by writing the sysfs file."""
    tree.supply("AC", type="Mains", online="1")
    tree.supply("BAT0", type="Battery", status="Charging", capacity="90")
    sensors = tree.sensors()
    assert sensors.snapshot().power.source == "mains"
    tree.supply("AC", online="0")
    tree.supply("BAT0", status="Discharging")
    assert sensors.snapshot().power.source == "battery"

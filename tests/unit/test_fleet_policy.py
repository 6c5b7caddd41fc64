"""The fleet's desired config: the allowlist, guards only tightened, boot replay held to both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigValidationError, load_config, write_overrides
from agent.config.fleet_policy import LOCAL_ONLY_KEYS, LOCAL_ONLY_SECTIONS
from agent.config.overrides import OverridesRefused, fleet_overrides, save_fleet_overrides
from agent.errors import ConfigError

# One value per local-only key the issue names, each of which was applied before (issue 17).
FORBIDDEN = {
    "device.sysfs_root": "/tmp/nowhere",
    "device.procfs_root": "/tmp/nowhere",
    "device.profile": "dev",
    "paths.state_dir": "/tmp/elsewhere",
    "mqtt.host": "broker.evil.example",
    "mqtt.password_file": "/var/lib/mobizo-agent/run/train.jsonl",
    "mqtt.tls.enabled": False,
    "mqtt.enabled": False,
    "service.bundle_dir": "/tmp/other-bundle",
    "service.inference_url": "http://evil.example:80",
    "inference.threads": 1,
    "daemon.eval_timeout_s": 5.0,
    "data.store_path": "/tmp/store.sqlite3",
    "adapters.registry_dir": "/tmp/adapters",
    "constraints.thermal_zones": ["none-such"],
    "constraints.power_supplies": ["none-such"],
    "training.backend": "eager",
}


@pytest.fixture
def rpi5(tmp_path: Path) -> Path:
    """A device on the Raspberry Pi 5 profile: the local ceiling for every guard."""
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[device]\nprofile = "raspberry-pi-5"\n[paths]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    return path


def _dotted_to_nested(key: str, value: object) -> dict[str, object]:
    out: dict[str, object] = {}
    node = out
    *head, last = key.split(".")
    for part in head:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[last] = value
    return out


def test_every_local_only_key_is_listed() -> None:
    sections = {key.split(".")[0] for key in FORBIDDEN}
    assert not LOCAL_ONLY_SECTIONS - sections
    assert not LOCAL_ONLY_KEYS - set(FORBIDDEN)


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_each_forbidden_key_is_refused_by_name(rpi5: Path, key: str) -> None:
    loaded = load_config(rpi5)
    for document in ({key: FORBIDDEN[key]}, _dotted_to_nested(key, FORBIDDEN[key])):
        with pytest.raises(OverridesRefused) as info:
            fleet_overrides(loaded, {"training": {"lr": 0.001}, **document})
        assert len(info.value.problems) == 1
        assert info.value.problems[0].startswith(f"{key}: local-only")


def test_whole_local_sections_name_each_key(rpi5: Path) -> None:
    document = {"mqtt": {"host": "evil.example", "port": 1884, "tls": {"enabled": False}}}
    with pytest.raises(OverridesRefused) as info:
        fleet_overrides(load_config(rpi5), document)
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "mqtt.host", "mqtt.port", "mqtt.tls.enabled",
    ]


@pytest.mark.parametrize(
    ("key", "looser", "tighter"),
    [
        ("constraints.min_available_memory_mb", 2048, 4096),
        ("constraints.stop_available_memory_mb", 128, 1024),
        ("constraints.thermal_start_c", 70.0, 50.0),
        ("constraints.thermal_stop_c", 85.0, 70.0),
        ("constraints.require_charging_or_mains", False, True),
        ("constraints.battery_start_pct", 75.0, 90.0),
        ("constraints.stop_on_user_activity", False, True),
        ("constraints.max_load_per_core", 0.0, 1.5),
        ("training.max_seconds_per_burst", 3600.0, 60.0),
        ("training.memory_max_mb", 0, 1024),
        ("training.nice", 0, 19),
        ("training.sched_idle", False, True),
    ],
)
def test_guards_only_tighten_against_the_board_profile(
    rpi5: Path, key: str, looser: object, tighter: object
) -> None:
    loaded = load_config(rpi5)
    with pytest.raises(OverridesRefused, match=rf"^{key}: .*looser than this device's own"):
        fleet_overrides(loaded, {key: looser})
    new = fleet_overrides(loaded, {key: tighter})
    section, name = key.split(".")
    assert getattr(getattr(new.config, section), name) == tighter


def test_memory_guard_at_zero_is_refused_naming_each_key(rpi5: Path) -> None:
    # The attack, made schema-valid: every memory guard and the trainer cap off.
    document = {"constraints": {"min_available_memory_mb": 0, "stop_available_memory_mb": 0},
                "training": {"memory_max_mb": 0}}
    with pytest.raises(OverridesRefused) as info:
        fleet_overrides(load_config(rpi5), document)
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "constraints.min_available_memory_mb", "constraints.stop_available_memory_mb",
        "training.memory_max_mb",
    ]


def test_hyperparameters_schedule_and_logging_are_the_fleets(rpi5: Path) -> None:
    document = {
        "training": {"lr": 0.001, "q": 2, "steps_per_burst": 20, "lr_schedule": "cosine"},
        "constraints": {"idle_minutes": 30.0, "allowed_hours": "01:00-05:00",
                        "min_new_examples": 64, "cooldown_minutes": 60.0},
        "data": {"heldout_share": 0.2},
        "adapters": {"eval_margin": 0.02, "versions_kept": 3},
        "logging": {"level": "DEBUG"},
    }
    new = fleet_overrides(load_config(rpi5), document)
    assert new.config.training.q == 2 and new.config.logging.level == "DEBUG"
    assert new.config.constraints.allowed_hours == "01:00-05:00"


def test_forced_settings_stay_on_top_and_are_not_judged(rpi5: Path, tmp_path: Path) -> None:
    forced = {"paths": {"state_dir": str(tmp_path / "forced")}, "daemon": {"eval_timeout_s": 9.0}}
    new = fleet_overrides(load_config(rpi5), {"training.lr": 0.002}, forced=forced)
    assert new.config.paths.state_dir == tmp_path / "forced"
    assert new.config.daemon.eval_timeout_s == 9.0


def test_schema_errors_still_name_the_field(rpi5: Path) -> None:
    with pytest.raises(ConfigValidationError, match=r"training\.q"):
        fleet_overrides(load_config(rpi5), {"training": {"q": 0}})


def test_saved_is_only_the_fleets_document(rpi5: Path, tmp_path: Path) -> None:
    path = tmp_path / "state" / "overrides.json"
    save_fleet_overrides(path, {"training.lr": 0.003, "logging": {"level": None}}, 12)
    doc = json.loads(path.read_text())
    assert doc == {"format_version": 1, "overrides": {"training": {"lr": 0.003}}, "version": 12}
    assert load_config(rpi5, replay_overrides=True).config.training.lr == 0.003


@pytest.mark.parametrize(
    "saved",
    [
        {"device": {"sysfs_root": "/tmp/none"}},
        {"paths": {"state_dir": "/nonexistent/forbidden"}},
        {"mqtt": {"host": "evil.example"}},
        {"constraints": {"min_available_memory_mb": 0}},
    ],
)
def test_boot_with_bad_saved_overrides_starts_without_them_and_says_why(
    rpi5: Path, tmp_path: Path, saved: dict[str, object]
) -> None:
    # What an older agent saved from one retained desired config (issue 17).
    write_overrides(tmp_path / "state" / "overrides.json", {**saved, "training": {"lr": 0.5}},
                    version=10**30)
    loaded = load_config(rpi5, replay_overrides=True)
    assert loaded.overrides == {} and loaded.config.training.lr != 0.5
    assert loaded.config.constraints.min_available_memory_mb == 2560
    key = next(iter(saved))
    assert loaded.dropped_overrides and key in loaded.dropped_overrides[0]
    assert any("ignored runtime overrides" in w for w in loaded.warnings)


def test_conflicting_dotted_keys_are_a_config_error(rpi5: Path) -> None:
    with pytest.raises(ConfigError):
        fleet_overrides(load_config(rpi5), {"training": 1, "training.lr": 0.1})

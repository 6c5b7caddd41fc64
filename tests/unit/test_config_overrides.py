"""Runtime overrides: validated like the file, persisted atomically, replayed at boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import (
    ConfigValidationError,
    apply_overrides,
    load_config,
    read_overrides,
    update_overrides,
    write_overrides,
)
from agent.errors import ConfigError


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n[training]\nq = 4\n')
    return path


def test_apply_overrides_nested_and_dotted(config_file: Path) -> None:
    cfg = load_config(config_file).config
    new = apply_overrides(cfg, {"training": {"q": 8}, "constraints.idle_minutes": 1.5})
    assert new.training.q == 8
    assert new.constraints.idle_minutes == 1.5
    assert cfg.training.q == 4  # the original is untouched (frozen models)


def test_apply_overrides_rejects_invalid_listing_every_error(config_file: Path) -> None:
    cfg = load_config(config_file).config
    with pytest.raises(ConfigValidationError) as info:
        apply_overrides(cfg, {"training": {"q": 0, "mode": "adam"}, "nope": 1})
    paths = {p.path for p in info.value.problems}
    assert paths == {"training.q", "training.mode", "nope"}
    assert all(p.where == "override" for p in info.value.problems)


def test_update_persists_atomically_and_replays_at_boot(config_file: Path, tmp_path: Path) -> None:
    loaded = load_config(config_file)
    updated = update_overrides(loaded, {"constraints": {"idle_minutes": 2.0}})
    assert updated.config.constraints.idle_minutes == 2.0
    assert updated.source_of("constraints.idle_minutes") == "override"
    store = tmp_path / "state" / "overrides.json"
    doc = json.loads(store.read_text())
    assert doc == {"format_version": 1, "overrides": {"constraints": {"idle_minutes": 2.0}}}
    assert not [p for p in store.parent.iterdir() if p.name.endswith(".tmp")]

    # A second change merges with the first; None removes an override.
    updated = update_overrides(updated, {"training.q": 2})
    updated = update_overrides(updated, {"constraints": {"idle_minutes": None}})
    assert read_overrides(store) == {"training": {"q": 2}}
    assert updated.config.constraints.idle_minutes == loaded.config.constraints.idle_minutes
    assert updated.source_of("constraints.idle_minutes") == "default"

    # Boot: the declared file plus the persisted overrides, through the same validation.
    booted = load_config(config_file, replay_overrides=True)
    assert booted.config.training.q == 2
    assert booted.declared.training.q == 4
    assert booted.source_of("training.q") == "override"


def test_invalid_update_changes_nothing(config_file: Path, tmp_path: Path) -> None:
    loaded = update_overrides(load_config(config_file), {"training.q": 2})
    store = tmp_path / "state" / "overrides.json"
    before = store.read_bytes()
    with pytest.raises(ConfigValidationError):
        update_overrides(loaded, {"training.q": -3})
    assert store.read_bytes() == before


def test_stale_override_file_is_skipped_with_a_warning(config_file: Path, tmp_path: Path) -> None:
    write_overrides(tmp_path / "state" / "overrides.json", {"training": {"q": 999}})
    loaded = load_config(config_file, replay_overrides=True)
    assert loaded.config.training.q == 4
    assert loaded.overrides == {}
    assert any("ignored runtime overrides" in w and "training.q" in w for w in loaded.warnings)


def test_corrupt_override_file(config_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "state" / "overrides.json"
    store.parent.mkdir(parents=True)
    store.write_text("{half a json")
    with pytest.raises(ConfigError, match="unreadable"):
        read_overrides(store)
    loaded = load_config(config_file, replay_overrides=True)  # boot still works
    assert loaded.warnings and loaded.config.training.q == 4


def test_override_file_may_be_toml(tmp_path: Path, config_file: Path) -> None:
    store = tmp_path / "overrides.toml"
    store.write_text("format_version = 1\n[overrides.training]\nq = 6\n")
    assert load_config(config_file, overrides_path=store).config.training.q == 6


def test_sighup_reload_valid_invalid_and_overrides(config_file: Path) -> None:
    from agent.config import reload_config

    running = update_overrides(load_config(config_file), {"constraints.idle_minutes": 3.0})
    text = config_file.read_text()
    config_file.write_text(text.replace("q = 4", "q = 2") + "[logging]\nlevel = 'DEBUG'\n")
    new, changed = reload_config(running)
    assert changed == {"training", "logging"}
    assert new.config.training.q == 2
    assert new.config.constraints.idle_minutes == 3.0  # overrides survive a reload

    config_file.write_text(text.replace("q = 4", "q = -1"))
    with pytest.raises(ConfigValidationError, match=r"training\.q"):
        reload_config(new)  # the caller logs this and keeps `new` running

    config_file.write_text(text + "[constraints]\nidle_minutes = 20.0\nbattery_start_pct = 1.0\n"
                           "battery_stop_pct = 1.0\n")
    running = update_overrides(new, {"constraints.battery_stop_pct": 0.5})
    config_file.write_text(
        text + "[constraints]\nbattery_start_pct = 0.2\nbattery_stop_pct = 0.1\n"
    )
    after, _ = reload_config(running)  # the old override (0.5 > 0.2) no longer validates
    assert after.overrides == {} and after.config.constraints.battery_stop_pct == 0.1
    assert any("dropped runtime overrides" in w for w in after.warnings)


def test_fleet_desired_config_replaces_the_set_with_its_version(
    config_file: Path, tmp_path: Path
) -> None:
    from agent.config import read_override_version, replace_overrides

    store = tmp_path / "state" / "overrides.json"
    loaded = update_overrides(load_config(config_file), {"training.q": 2})
    assert read_override_version(store) is None
    new = replace_overrides(loaded, {"constraints": {"idle_minutes": 1.0}}, version=7)
    assert new.overrides == {"constraints": {"idle_minutes": 1.0}}  # q override gone
    assert new.config.training.q == 4
    assert read_override_version(store) == 7
    with pytest.raises(ConfigValidationError):
        replace_overrides(new, {"training": {"q": "four"}}, version=8)
    assert read_override_version(store) == 7  # rejected: nothing persisted
    update_overrides(new, {"training.q": 3})
    assert read_override_version(store) == 7  # a local change keeps the fleet version
    cleared = replace_overrides(new, {}, version=9)
    assert cleared.overrides == {} and read_overrides(store) == {}

"""Config: defaults, layered validation, error reports, profiles, provenance, diff."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigValidationError, diff, load_config
from agent.config.constraints import parse_hours
from agent.config.loader import default_config_path
from agent.errors import ConfigError

PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs"


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(exc: ConfigValidationError) -> dict[str, str]:
    return {p.path: str(p) for p in exc.problems}


def test_empty_file_is_valid_with_defaults(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, ""))
    cfg = loaded.config
    assert cfg == AgentConfig(paths=cfg.paths)
    assert cfg.device.profile == ""
    assert cfg.constraints.require_charging_or_mains is True
    assert cfg.training.mode == "prge-dual"
    assert cfg.mqtt.enabled is False
    assert loaded.profile is None
    assert loaded.source_of("training.q") == "default"


def test_derived_paths_follow_state_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f'[paths]\nstate_dir = "{tmp_path}/st"\n')).config
    assert cfg.store_path == tmp_path / "st/interactions.sqlite3"
    assert cfg.registry_dir == tmp_path / "st/adapters"
    assert cfg.bundle_dir == tmp_path / "st/bundle"
    assert cfg.paths.status_file == tmp_path / "st/status.json"
    assert cfg.paths.overrides_file == tmp_path / "st/overrides.json"


def test_default_state_dir_prefers_systemd_state_directory() -> None:
    from agent.config.paths import default_state_dir

    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/x:/var/lib/y"}) == Path("/var/lib/x")


def test_every_field_error_is_listed_with_path_value_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [device]
        threads = -1

        [constraints]
        idle_minutes = "5"
        allowed_hours = "25:00-06:00"
        requre_charging_or_mains = true

        [training]
        mode = "sgd"
        q = 0

        [bogus]
        x = 1
        """)
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    found = problems_of(info.value)
    assert set(found) == {
        "device.threads", "constraints.idle_minutes", "constraints.allowed_hours",
        "constraints.requre_charging_or_mains", "training.mode", "training.q", "bogus",
    }
    assert found["device.threads"].endswith(f"(got -1) [{path}:2]")
    assert "(got '5')" in found["constraints.idle_minutes"]  # strict: no silent str->float
    assert f"[{path}:6]" in found["constraints.allowed_hours"]
    typo = found["constraints.requre_charging_or_mains"]
    assert "did you mean 'require_charging_or_mains'" in typo
    assert "(got 'sgd')" in found["training.mode"]
    assert f"[{path}:13]" in found["bogus"]
    # The exception text itself lists every problem (what `run` prints at start).
    assert all(line in str(info.value) for line in found.values())


def test_section_validator_errors_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [constraints]
        battery_start_pct = 50.0
        battery_stop_pct = 60.0
        thermal_start_c = 80.0
        thermal_stop_c = 70.0
        min_available_memory_mb = 100
        stop_available_memory_mb = 200
        [training]
        warmup_steps = 10
        total_steps = 10
        [adapters]
        eval_margin = 1.5
        """)
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    found = problems_of(info.value)
    assert set(found) == {
        "constraints.battery_stop_pct", "constraints.thermal_stop_c",
        "constraints.stop_available_memory_mb", "training.warmup_steps", "adapters.eval_margin",
    }
    assert found["constraints.battery_stop_pct"].endswith(f"(got 60.0) [{path}:3]")
    assert f"[{path}:9]" in found["training.warmup_steps"]


def test_cross_section_checks(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [training]
        memory_max_mb = 4096
        [service]
        bundle_dir = "/srv/bundle"
        [adapters]
        registry_dir = "/srv/bundle/adapters"
        """)
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    found = problems_of(info.value)
    assert set(found) == {"training.memory_max_mb", "adapters.registry_dir"}
    assert "min_available_memory_mb to at least 4096" in found["training.memory_max_mb"]
    assert f"[{path}:2]" in found["training.memory_max_mb"]


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), ("01:00-06:00", (60, 360)), ("23:00-06:00", (1380, 360)),
])
def test_parse_hours(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_hours(text) == expected


@pytest.mark.parametrize("text", ["1:00-6:00", "01:00", "06:00-06:00", "24:00-01:00", "x"])
def test_parse_hours_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hours(text)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[device]\nthreads = = 2\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_profile_fills_defaults_and_file_overrides_it(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [device]
        profile = "raspberry-pi-5"
        [training]
        q = 2
        """)
    loaded = load_config(path, profiles_dir=PROFILES)
    cfg = loaded.config
    assert loaded.profile is not None and loaded.profile.name == "raspberry-pi-5"
    assert cfg.constraints.thermal_zones == ["cpu-thermal"]  # from the profile
    assert cfg.training.q == 2  # the file wins
    assert cfg.training.batch == 2  # from the profile too
    assert loaded.source_of("constraints.thermal_zones") == "profile raspberry-pi-5"
    assert loaded.source_of("training.q") == f"file {path}"
    assert loaded.source_of("training.eps") == "default"


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[device]\nprofile = "toaster"\n')
    with pytest.raises(ConfigError, match=r"'toaster' not found.*raspberry-pi-4"):
        load_config(path, profiles_dir=PROFILES)


def test_error_in_profile_points_into_the_profile(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "broken.toml").write_text("[profile]\ndescription = 'x'\n\n[training]\nq = 0\n")
    path = write(tmp_path, '[device]\nprofile = "broken"\n')
    with pytest.raises(ConfigValidationError) as info:
        load_config(path, profiles_dir=profiles)
    (problem,) = info.value.problems
    assert problem.path == "training.q"
    assert problem.where == f"profile broken {profiles / 'broken.toml'}:5"


def test_config_path_env_override() -> None:
    assert default_config_path({}) == Path("/etc/mobizo-agent/agent.toml")
    assert default_config_path({"MOBIZO_CONFIG": "/x/a.toml"}) == Path("/x/a.toml")


def test_diff_names_changed_sections(tmp_path: Path) -> None:
    old = load_config(write(tmp_path, "", "a.toml")).config
    new = load_config(write(tmp_path, "[training]\nq = 2\n[logging]\nlevel = 'DEBUG'\n",
                            "b.toml")).config
    assert diff(old, new) == {"training", "logging"}
    assert diff(old, old) == set()


def test_show_renders_valid_toml_with_sources(tmp_path: Path) -> None:
    import tomllib

    from agent.config.show import render_show, show_json

    path = write(tmp_path, '[device]\nprofile = "dev"\n[training]\nq = 3\n')
    loaded = load_config(path, profiles_dir=PROFILES)
    text = render_show(loaded)
    assert "q = 3  # file " in text
    assert "require_charging_or_mains = false  # profile dev" in text
    assert "lr_schedule = \"constant\"  # default" in text
    reparsed = tomllib.loads(text)  # the output is itself a config file
    assert AgentConfig.model_validate(reparsed).training.q == 3
    doc = show_json(loaded)
    assert doc["sources"]["training.q"] == f"file {path}"
    assert doc["profile"] == "dev"

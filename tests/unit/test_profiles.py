"""Board profiles: every file validates against the schema; detect-board on fake trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.config.detect import detect_board
from agent.config.profiles import list_profiles, load_profile

PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs"
REQUIRED = {"raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "jetson-agx-orin",
            "generic-x86_64", "dev"}
ALL = list_profiles(PROFILES)


def test_every_required_board_has_a_profile() -> None:
    assert set(ALL) >= REQUIRED


@pytest.mark.parametrize("name", ALL)
def test_profile_validates(name: str, tmp_path: Path) -> None:
    profile = load_profile(name, PROFILES)
    assert profile.meta.description
    # A profile is a partial config: selecting it from an otherwise empty file must validate.
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nprofile = "{name}"\n')
    loaded = load_config(path, profiles_dir=PROFILES)
    cfg = loaded.config
    # What a board profile is for: the training sizes and the inference settings...
    for key in ("training.q", "training.batch", "training.sequence_length",
                "training.steps_per_burst", "inference.max_context"):
        assert loaded.source_of(key) == f"profile {name}", key
    # ...with the thermal and memory guards on, in every profile, dev included.
    assert cfg.constraints.thermal_start_c <= cfg.constraints.thermal_stop_c <= 100
    assert cfg.constraints.stop_available_memory_mb > 0
    if cfg.training.memory_max_mb:
        assert cfg.training.memory_max_mb <= cfg.constraints.min_available_memory_mb


@pytest.mark.parametrize("name", ALL)
def test_profile_training_shape_is_exported_by_default(name: str, tmp_path: Path) -> None:
    """A board must not need a custom export for its (slices, batch) train method."""
    from exporter.options import MAX_LENGTH, ExportOptions

    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nprofile = "{name}"\n')
    training = load_config(path, profiles_dir=PROFILES).config.training
    defaults = ExportOptions()
    assert training.slices in defaults.slices and training.batch in defaults.batch
    assert training.sequence_length <= MAX_LENGTH


def test_dev_profile_is_relaxed() -> None:
    path = PROFILES / "dev.toml"
    import tomllib

    values = tomllib.loads(path.read_text())
    assert values["constraints"]["require_charging_or_mains"] is False
    assert values["constraints"]["idle_minutes"] * 60 <= 10
    assert values["training"]["steps_per_burst"] <= 10
    assert not values["profile"].get("match_model") and not values["profile"].get("match_arch")


def fake_tree(root: Path, model: str | None = None, dmi: dict[str, str] | None = None) -> Path:
    if model is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    for name, value in (dmi or {}).items():
        (root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
        (root / "sys/class/dmi/id" / name).write_text(value + "\n")
    return root


@pytest.mark.parametrize(("model", "arch", "expected"), [
    ("Raspberry Pi 4 Model B Rev 1.4", "aarch64", "raspberry-pi-4"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "aarch64", "raspberry-pi-4"),
    ("Raspberry Pi 5 Model B Rev 1.0", "aarch64", "raspberry-pi-5"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "aarch64", "jetson-orin-nano"),
    ("NVIDIA Jetson AGX Orin Developer Kit", "aarch64", "jetson-agx-orin"),
    ("Jetson AGX Orin", "aarch64", "jetson-agx-orin"),
    ("Some Unknown ARM Board", "aarch64", None),
    (None, "x86_64", "generic-x86_64"),
])
def test_detect_from_device_tree(
    tmp_path: Path, model: str | None, arch: str, expected: str | None
) -> None:
    _, suggestion = detect_board(fake_tree(tmp_path, model), PROFILES, arch=arch)
    assert (suggestion.profile if suggestion else None) == expected


def test_detect_reads_sys_firmware_devicetree_too(tmp_path: Path) -> None:
    base = tmp_path / "sys/firmware/devicetree/base"
    base.mkdir(parents=True)
    (base / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    _, suggestion = detect_board(tmp_path, PROFILES, arch="aarch64")
    assert suggestion is not None and suggestion.profile == "raspberry-pi-5"


def test_detect_from_dmi_with_a_profile_that_declares_it(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("generic-x86_64", "dev"):
        (profiles / f"{name}.toml").write_text((PROFILES / f"{name}.toml").read_text())
    (profiles / "nuc.toml").write_text(
        '[profile]\ndescription = "Intel NUC"\nmatch_dmi = ["NUC11"]\n'
    )
    root = fake_tree(tmp_path / "root", dmi={"sys_vendor": "Intel(R) Client Systems",
                                              "product_name": "NUC11TNHi5"})
    facts, suggestion = detect_board(root, profiles, arch="x86_64")
    assert dict(facts.dmi)["product_name"] == "NUC11TNHi5"
    assert suggestion is not None and suggestion.profile == "nuc"  # DMI beats architecture
    assert "DMI" in suggestion.evidence


def test_detect_board_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_tree(tmp_path, "Raspberry Pi 4 Model B Rev 1.5")
    argv = ["detect-board", "--root", str(root), "--profiles-dir", str(PROFILES),
            "--arch", "aarch64", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"] == "raspberry-pi-4"
    assert doc["model"] == "Raspberry Pi 4 Model B Rev 1.5"
    assert main(["detect-board", "--root", str(tmp_path / "empty"), "--profiles-dir",
                 str(PROFILES), "--arch", "riscv64"]) == 1
    assert "no board profile" in capsys.readouterr().out

"""Board profiles: ``firmware_configs/<name>.toml``, partial configs that fill in defaults.

A profile holds the same sections as ``agent.toml`` (what a board needs: threads, memory caps,
thermal zone and limits, power-supply names, training sizes, inference settings) plus a
``[profile]`` table that describes it and tells ``detect-board`` which machines it fits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from agent.config.base import Section
from agent.config.problems import ConfigValidationError, problems_from_validation_error
from agent.config.tomlfile import TomlDoc, read_toml
from agent.errors import ConfigError

PROFILES_ENV = "MOBIZO_PROFILES_DIR"
_SYSTEM_DIRS = (
    Path("/opt/mobizo-agent/firmware_configs"),
    Path("/usr/share/mobizo-agent/firmware_configs"),
)


class ProfileMeta(Section):
    """The ``[profile]`` table of a board profile."""

    description: str = Field(default="", description="one line about the board")
    match_model: list[str] = Field(
        default_factory=list,
        description="substrings of /proc/device-tree/model (case-insensitive) this profile fits",
    )
    match_dmi: list[str] = Field(
        default_factory=list,
        description="substrings of DMI sys_vendor/product_name/board_name this profile fits",
    )
    match_arch: list[str] = Field(
        default_factory=list,
        description="machine architectures (uname -m) this profile fits as a fallback",
    )
    priority: int = Field(
        default=0, ge=-100, le=100,
        description="higher wins when several profiles match at the same level",
    )


@dataclass(frozen=True)
class Profile:
    """A loaded board profile."""

    name: str
    path: Path
    meta: ProfileMeta
    values: dict[str, Any] = field(default_factory=dict)
    doc: TomlDoc | None = None


def default_profiles_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where profiles live: ``$MOBIZO_PROFILES_DIR``, the source checkout, then system dirs."""
    env = os.environ if env is None else env
    if env.get(PROFILES_ENV):
        return Path(env[PROFILES_ENV])
    checkout = Path(__file__).resolve().parents[2] / "firmware_configs"
    for candidate in (checkout, *_SYSTEM_DIRS):
        if candidate.is_dir():
            return candidate
    return checkout


def list_profiles(directory: Path | None = None) -> list[str]:
    """Names of every profile in ``directory`` (sorted)."""
    directory = default_profiles_dir() if directory is None else Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_profile(name: str, directory: Path | None = None) -> Profile:
    """Read profile ``name``; its [profile] table is checked here, its sections by the caller.

    Raises:
        ConfigError: no such profile, or the file is unreadable or malformed.
    """
    directory = default_profiles_dir() if directory is None else Path(directory)
    path = directory / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(list_profiles(directory)) or "none found"
        raise ConfigError(
            f"board profile '{name}' not found in {directory} (known: {known}); fix "
            "device.profile or run `mobizo-agent detect-board`"
        )
    doc = read_toml(path)
    values = dict(doc.values)
    raw_meta = values.pop("profile", {})
    try:
        meta = ProfileMeta.model_validate(raw_meta)
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, ProfileMeta)
        raise ConfigValidationError(problems, origin=f"profile {name} ({path}) [profile]") from None
    if "profile" in values.get("device", {}):
        raise ConfigError(f"{path}: a profile must not set device.profile; remove that line")
    return Profile(name=name, path=path, meta=meta, values=values, doc=doc)

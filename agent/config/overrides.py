"""The runtime-override file: what a fleet command changed, kept apart from the declared file.

Frigate keeps declared config and runtime changes apart the same way; here the overrides live
in ``<state_dir>/overrides.json``, written atomically (temp + fsync + rename + dir fsync) and
replayed at boot through the same validation as the file (:func:`agent.config.load_config`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.atomic import atomic_write_text
from agent.config.loader import LoadedConfig, with_overrides
from agent.errors import ConfigError

FORMAT_VERSION = 1


def read_overrides(path: Path) -> dict[str, Any]:
    """The overrides persisted at ``path``; ``{}`` when the file does not exist.

    Raises:
        ConfigError: the file exists but is unreadable or not an override document.
    """
    return read_override_document(path)[0]


def read_override_version(path: Path) -> int | None:
    """The fleet's desired-config version stored with the overrides (None: never set).

    Unreadable files count as None, so the next desired config from the fleet is accepted.
    """
    try:
        return read_override_document(path)[1]
    except ConfigError:
        return None


def read_override_document(path: Path) -> tuple[dict[str, Any], int | None]:
    """(overrides, desired-config version) persisted at ``path``; ``({}, None)`` if absent.

    Raises:
        ConfigError: the file exists but is unreadable or not an override document.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        # JSON is what the fleet link writes; TOML is accepted for a hand-written file.
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"override file {path} is unreadable ({exc}); delete it") from exc
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"override file {path} is not an override document version {FORMAT_VERSION}; "
            "delete it"
        )
    values = raw.get("overrides", {})
    if not isinstance(values, dict):
        raise ConfigError(f"override file {path}: 'overrides' must be an object; delete it")
    version = raw.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise ConfigError(f"override file {path}: 'version' must be an integer; delete it")
    return values, version


def write_overrides(
    path: Path, overrides: Mapping[str, Any], *, version: int | None = None
) -> None:
    """Persist ``overrides`` (nested dict) at ``path`` atomically and durably.

    Args:
        path: the override file (JSON).
        overrides: the complete override set.
        version: the fleet's desired-config version these overrides came from, if any.
    """
    document: dict[str, Any] = {"format_version": FORMAT_VERSION, "overrides": dict(overrides)}
    if version is not None:
        document["version"] = version
    if Path(path).suffix == ".toml":
        raise ConfigError(f"{path}: overrides are written as JSON; use a .json path")
    text = json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(Path(path), text)


def update_overrides(
    loaded: LoadedConfig, changes: Mapping[str, Any], path: Path | None = None
) -> LoadedConfig:
    """Validate ``changes`` on top of the current overrides, persist them, return the new config.

    Validate first, persist second: an invalid change raises ConfigValidationError and
    neither the file nor the running config changes. ``None`` values remove an override.

    Args:
        loaded: the running config.
        changes: override changes, nested or dotted keys.
        path: where to persist; default ``<paths.state_dir>/overrides.json`` of the declared config.
    """
    new = with_overrides(loaded, changes)
    target = path or loaded.declared.paths.overrides_file
    write_overrides(target, new.overrides, version=read_override_version(target))
    return new


def replace_overrides(
    loaded: LoadedConfig, document: Mapping[str, Any], *, version: int | None = None,
    path: Path | None = None,
) -> LoadedConfig:
    """Make ``document`` the complete override set (a fleet desired-config), persist, return.

    This is what a ``DesiredConfigSink.apply(version, document)`` does: validate the declared
    config plus ``document`` exactly like a file (ConfigValidationError lists every problem,
    and nothing changes), then persist overrides and version atomically. An empty document
    clears every override. Stale versions are the caller's check (:func:`read_override_version`).
    """
    new = with_overrides(loaded, document, replace=True)
    write_overrides(path or loaded.declared.paths.overrides_file, new.overrides, version=version)
    return new

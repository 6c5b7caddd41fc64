"""The runtime-override file ``<state_dir>/overrides.json``: read and written as plain data.

Frigate keeps declared config and runtime changes apart the same way; the overrides are
written atomically (temp + fsync + rename + dir fsync) and replayed at boot through the same
validation as the file (:func:`agent.config.load_config`). Validating and applying them is
agent/config/overrides.py; this module only knows the document.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.io.atomic import atomic_write_text

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

"""Runtime overrides: what a fleet command changed, kept apart from the declared file.

Changes are validated on top of the declared config exactly like the file, then persisted
(agent/config/override_file.py) and replayed at boot (:func:`agent.config.load_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.loader import LoadedConfig, with_overrides
from agent.config.override_file import read_override_version, write_overrides


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

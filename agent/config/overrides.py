"""Runtime overrides: what a fleet command changed, kept apart from the declared file.

Changes are validated on top of the declared config exactly like the file, then persisted
(agent/config/override_file.py) and replayed at boot (:func:`agent.config.load_config`).
A fleet desired config also passes the fleet policy (:mod:`agent.config.fleet_policy`), and
is validated first (:func:`fleet_overrides`), applied by the daemon, and only then saved
(:func:`save_fleet_overrides`): what did not apply never survives a reboot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config.fleet_policy import local_only_problems, loosened_problems
from agent.config.loader import LoadedConfig, deep_merge, drop_none, nest_dotted, with_overrides
from agent.config.override_file import read_override_version, write_overrides
from agent.errors import ConfigError


class OverridesRefused(ConfigError):
    """A fleet document sets what the fleet may not: one line per key in ``problems``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def fleet_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet's overrides as a nested dict, ``None`` values dropped (dotted keys allowed).

    Raises:
        ConfigError: two keys conflict (``a.b`` and ``a`` set to a value).
    """
    return drop_none(nest_dotted(document))


def fleet_overrides(
    loaded: LoadedConfig, document: Mapping[str, Any], *, forced: Mapping[str, Any] | None = None
) -> LoadedConfig:
    """The config with the fleet's ``document`` as the complete override set; nothing saved.

    Checked in order: local-only keys (:exc:`OverridesRefused`, every key named), then the
    schema exactly like the file (ConfigValidationError), then every guard the document sets
    against the local config (:exc:`OverridesRefused`). ``forced`` (what the command line
    forces) stays on top and is not the fleet's to judge.
    """
    nested = fleet_document(document)
    problems = local_only_problems(nested)
    if problems:
        raise OverridesRefused(problems)
    merged = deep_merge(nested, nest_dotted(forced)) if forced else nested
    new = with_overrides(loaded, merged, replace=True)
    problems = loosened_problems(loaded.declared, new.config, nested)
    if problems:
        raise OverridesRefused(problems)
    return new


def save_fleet_overrides(path: Path, document: Mapping[str, Any], version: int) -> None:
    """Persist the fleet's ``document`` (only it: never what the command line forces) with its
    version, atomically; call once the daemon has applied it."""
    write_overrides(path, fleet_document(document), version=version)


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

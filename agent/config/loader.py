"""Load the effective config: defaults ← board profile ← file ← runtime overrides.

Each layer is a partial nested dict; they are merged key by key (tables merge, scalars and
lists replace) and the result is validated once, so a profile, a file and an override are all
held to the same schema. Where each value came from is kept for ``config show`` and for error
messages.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config.fleet_policy import local_only_problems, loosened_problems
from agent.config.override_file import read_overrides
from agent.config.problems import ConfigValidationError, problems_from_validation_error
from agent.config.profiles import Profile, default_profiles_dir, load_profile
from agent.config.root import AgentConfig
from agent.config.tomlfile import TomlDoc, closest, leaf_paths, read_toml
from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mobizo-agent/agent.toml")
CONFIG_ENV = "MOBIZO_CONFIG"

DEFAULT = "default"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$MOBIZO_CONFIG`` if set, else ``/etc/mobizo-agent/agent.toml``."""
    env = os.environ if env is None else env
    return Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else DEFAULT_CONFIG_PATH


@dataclass
class LoadedConfig:
    """The effective config and how it was made.

    Attributes:
        config: the validated effective config (declared + overrides).
        declared: the config from defaults, profile and file only (no overrides).
        sources: dotted leaf path -> "profile NAME", "file PATH" or "override"; absent = default.
        file: the config file read, if any.
        profile: the board profile applied, if any.
        overrides: the runtime overrides applied (nested dict).
        warnings: problems that did not stop loading (e.g. a rejected override file).
        dropped_overrides: why saved runtime overrides were not replayed at boot (empty when
            they were, or there were none): the fleet link reports it.
    """

    config: AgentConfig
    declared: AgentConfig
    sources: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    profile: Profile | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    declared_sources: dict[str, str] | None = None
    dropped_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.declared_sources is None:
            self.declared_sources = dict(self.sources)

    def source_of(self, dotted: str) -> str:
        """Where the value at ``dotted`` came from ("default" when no layer set it)."""
        source = closest(self.sources, dotted)
        return DEFAULT if source is None else source


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base``: nested tables merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def nest_dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"constraints.idle_minutes": 5}`` into ``{"constraints": {"idle_minutes": 5}}``;
    nested input passes through (both forms may be mixed)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        parts = str(key).split(".")
        if isinstance(value, Mapping):
            value = nest_dotted(value)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override key {key!r} conflicts with another override")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out


class _Layers:
    """Merged layers plus where each leaf came from, for provenance and error locations."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.docs: dict[str, TomlDoc] = {}

    def add(self, values: Mapping[str, Any], source: str, doc: TomlDoc | None = None) -> None:
        self.values = deep_merge(self.values, values)
        for path in leaf_paths(values):
            # A table replaced by a scalar (or vice versa) drops the old leaves' sources.
            for old in [p for p in self.sources if p.startswith(path + ".")]:
                del self.sources[old]
            self.sources[path] = source
        if doc is not None:
            self.docs[source] = doc

    def locate(self, dotted: str) -> str:
        dotted = re.sub(r"\[\d+\]", "", dotted)
        if dotted not in self.sources:
            # A whole table (e.g. an unknown section): point at the first key written in it.
            inner = next((p for p in self.sources if p.startswith(dotted + ".")), None)
            if inner is not None:
                table_src = self.sources[inner]
                table_doc = self.docs.get(table_src)
                table_line = table_doc.line_of(dotted) if table_doc else None
                if table_doc is not None and table_line is not None:
                    where = f"{table_doc.path}:{table_line}"
                    return f"{table_src} {where}" if table_src.startswith("profile") else where
                return table_src
        parts = dotted.split(".")
        while parts:
            src = self.sources.get(".".join(parts))
            if src is not None:
                doc = self.docs.get(src)
                line = doc.line_of(".".join(parts)) if doc else None
                if doc is not None and line is not None:
                    where = f"{doc.path}:{line}"
                    # "profile NAME FILE:LINE" for a profile, plain "FILE:LINE" for the file
                    return f"{src} {where}" if src.startswith("profile") else where
                return src
            parts.pop()
        return ""


def validate(values: Mapping[str, Any], *, origin: str, locate: Any = None) -> AgentConfig:
    """Validate a nested dict as :class:`AgentConfig`; raise ConfigValidationError listing all."""
    try:
        return AgentConfig.model_validate(dict(values))
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, AgentConfig, locate=locate)
        raise ConfigValidationError(problems, origin=origin) from None


def load_config(
    path: Path | None = None,
    *,
    profiles_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    overrides_path: Path | None = None,
    replay_overrides: bool = False,
) -> LoadedConfig:
    """Load, merge and validate the config.

    Args:
        path: the TOML file; None = no file (defaults and profile only).
        profiles_dir: where board profiles live (default: :func:`default_profiles_dir`).
        overrides: runtime overrides to apply on top (nested or dotted keys).
        overrides_path: a persisted override file to replay on top (JSON).
        replay_overrides: replay ``<paths.state_dir>/overrides.json`` when no
            ``overrides_path`` is given (what the daemon does at boot).

    Raises:
        ConfigError / ConfigValidationError: the file, profile or explicit ``overrides`` are
            invalid. A persisted override file that no longer validates is NOT fatal: it is
            skipped with a warning so a bad fleet command cannot keep a device from booting.
    """
    layers = _Layers()
    file_values: dict[str, Any] = {}
    doc: TomlDoc | None = None
    if path is not None:
        doc = read_toml(Path(path))
        file_values = doc.values
    origin = str(path) if path is not None else "config"

    profile: Profile | None = None
    device = file_values.get("device")
    profile_name = device.get("profile", "") if isinstance(device, Mapping) else ""
    if profile_name and isinstance(profile_name, str):
        directory = default_profiles_dir() if profiles_dir is None else Path(profiles_dir)
        profile = load_profile(profile_name, directory)
        layers.add(profile.values, f"profile {profile.name}", profile.doc)
    if doc is not None:
        layers.add(file_values, f"file {doc.path}", doc)
    declared = validate(layers.values, origin=origin, locate=layers.locate)

    loaded = LoadedConfig(
        config=declared, declared=declared, sources=dict(layers.sources),
        file=doc.path if doc else None, profile=profile,
    )
    if overrides_path is None and replay_overrides:
        overrides_path = declared.paths.overrides_file
    if overrides_path is not None:
        try:
            loaded = _replay(loaded, read_overrides(Path(overrides_path)))
        except ConfigError as exc:
            # Boot without them rather than crash-loop on a bad saved override.
            loaded.warnings.append(f"ignored runtime overrides in {overrides_path}: {exc}")
            loaded.dropped_overrides.append(f"saved overrides not replayed at boot: {exc}")
    if overrides:
        loaded = with_overrides(loaded, overrides)
    return loaded


def _replay(loaded: LoadedConfig, persisted: Mapping[str, Any]) -> LoadedConfig:
    """``loaded`` with the saved (fleet) overrides, held to the fleet policy as when they came.

    Raises:
        ConfigError: a key is local-only, a guard is looser than the local config (an older
            agent may have saved it, or the local config was tightened since), or the schema
            refuses them.
    """
    nested = drop_none(nest_dotted(persisted))
    if not nested:
        return loaded
    problems = local_only_problems(nested)
    if problems:
        raise ConfigError("; ".join(problems))
    new = with_overrides(loaded, nested, replace=True)
    problems = loosened_problems(loaded.declared, new.config, nested)
    if problems:
        raise ConfigError("; ".join(problems))
    return new


def with_overrides(
    loaded: LoadedConfig, changes: Mapping[str, Any], *, replace: bool = False
) -> LoadedConfig:
    """A new :class:`LoadedConfig` with ``changes`` merged into its overrides.

    A ``None`` value removes that override (the declared value comes back). Validation is the
    same as for the file; on failure nothing changes and ConfigValidationError is raised.
    """
    nested = nest_dotted(changes)
    merged = nested if replace else deep_merge(loaded.overrides, nested)
    merged = drop_none(merged)
    base = loaded.declared.model_dump(mode="python")
    values = deep_merge(base, merged)
    config = validate(values, origin="runtime override", locate=lambda _p: "override")
    declared_sources = dict(loaded.declared_sources or {})
    sources = {
        k: v for k, v in declared_sources.items() if not any(
            k == p or k.startswith(p + ".") for p in leaf_paths(merged)
        )
    }
    sources.update({p: "override" for p in leaf_paths(merged)})
    return LoadedConfig(
        config=config, declared=loaded.declared, sources=sources, file=loaded.file,
        profile=loaded.profile, overrides=merged, warnings=list(loaded.warnings),
        declared_sources=declared_sources, dropped_overrides=list(loaded.dropped_overrides),
    )


def drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without ``None`` leaves (and without tables left empty by that)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            inner = drop_none(value)
            if inner:
                out[key] = inner
        else:
            out[key] = value
    return out


def apply_overrides(config: AgentConfig, overrides: Mapping[str, Any]) -> AgentConfig:
    """``config`` with ``overrides`` (nested or dotted keys) applied, validated like a file.

    Raises:
        ConfigValidationError: the result is invalid; every problem is listed.
    """
    values = deep_merge(config.model_dump(mode="python"), drop_none(nest_dotted(overrides)))
    return validate(values, origin="runtime override", locate=lambda _p: "override")


def diff(old: AgentConfig, new: AgentConfig) -> set[str]:
    """Names of the top-level sections whose values differ (what a SIGHUP reload must redo)."""
    return {
        name for name in AgentConfig.model_fields
        if getattr(old, name).model_dump() != getattr(new, name).model_dump()
    }


def reload_config(
    current: LoadedConfig, path: Path | None = None, *, profiles_dir: Path | None = None
) -> tuple[LoadedConfig, set[str]]:
    """Re-read the config file for a SIGHUP reload.

    The runtime overrides of ``current`` are re-applied on top of the new declared config; if
    they no longer validate they are dropped with a warning (the file wins).

    Args:
        current: the running config.
        path: the file to read (default: the file ``current`` came from).
        profiles_dir: board profiles directory.

    Returns:
        The new config and the names of the sections that changed (apply only those).

    Raises:
        ConfigError / ConfigValidationError: the new file is invalid — keep running ``current``
            and log the error (every problem is in the message).
    """
    fresh = load_config(path if path is not None else current.file, profiles_dir=profiles_dir)
    if current.overrides:
        try:
            fresh = with_overrides(fresh, current.overrides, replace=True)
        except ConfigError as exc:
            fresh.warnings.append(f"dropped runtime overrides that no longer validate: {exc}")
    return fresh, diff(current.config, fresh.config)

"""Render the effective config as TOML, each value annotated with where it came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.config.loader import LoadedConfig


def toml_value(value: Any) -> str:
    """A TOML literal for a config value (str, bool, int, float, Path, list)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_show(loaded: LoadedConfig) -> str:
    """The effective config as TOML; ``# <source>`` after each value.

    Values left unset (``None``, meaning "derived") are shown as comments with what they
    resolve to, since TOML has no null.
    """
    cfg = loaded.config
    derived = {
        "data.store_path": cfg.store_path,
        "adapters.registry_dir": cfg.registry_dir,
        "service.bundle_dir": cfg.bundle_dir,
    }
    header = ["# effective mobizo-agent config"]
    header.append(f"# file: {loaded.file if loaded.file else '(none: defaults only)'}")
    if loaded.profile:
        header.append(f"# profile: {loaded.profile.name} ({loaded.profile.path})")
    if loaded.overrides:
        header.append("# runtime overrides: " + json.dumps(loaded.overrides, default=str))
    out = header[:]
    for warning in loaded.warnings:
        out.append(f"# warning: {warning}")
    for section, model in cfg:
        _render_table(out, section, model.model_dump(mode="python"), loaded, derived)
    return "\n".join(out) + "\n"


def _render_table(
    out: list[str], prefix: str, values: dict[str, Any], loaded: LoadedConfig,
    derived: dict[str, Any],
) -> None:
    out.append("")
    out.append(f"[{prefix}]")
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for name, value in values.items():
        if name in tables:
            continue
        path = f"{prefix}.{name}"
        source = loaded.source_of(path)
        if value is None:
            shown = toml_value(derived[path]) if path in derived else "(unset)"
            out.append(f"# {name} = {shown}  # {source}{' (derived)' if path in derived else ''}")
        else:
            out.append(f"{name} = {toml_value(value)}  # {source}")
    for name, table in tables.items():
        _render_table(out, f"{prefix}.{name}", table, loaded, derived)


def show_json(loaded: LoadedConfig) -> dict[str, Any]:
    """Machine-readable form: the config and the source of every leaf."""
    cfg = loaded.config.model_dump(mode="json")
    from agent.config.tomlfile import leaf_paths

    sources = {path: loaded.source_of(path) for path in leaf_paths(cfg)}
    return {
        "config": cfg,
        "sources": sources,
        "file": str(loaded.file) if loaded.file else None,
        "profile": loaded.profile.name if loaded.profile else None,
        "overrides": loaded.overrides,
        "warnings": loaded.warnings,
    }

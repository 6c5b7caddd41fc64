"""Read a TOML file and remember on which line each key was written.

``tomllib`` gives no positions, so a light line scanner maps dotted key paths to line numbers
for error messages. It understands ``[table]`` headers and ``key = value`` / ``a.b = value``
lines — all our config files use — and simply finds nothing for anything fancier.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError

V = TypeVar("V")

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+(?:\s*\.\s*[A-Za-z0-9_\-\"]+)*)\s*=")


@dataclass
class TomlDoc:
    """A parsed TOML file: its values and the line of each key."""

    path: Path
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, dotted: str) -> int | None:
        """Line of ``dotted`` or of its closest written parent (e.g. the table header)."""
        return closest(self.lines, dotted)


def closest(by_key: Mapping[str, V], dotted: str) -> V | None:
    """The value of ``dotted`` in ``by_key``, else of its nearest parent key; None if none.

    ``closest({"a": 1}, "a.b.c") == 1``: what is known about a table covers its keys.
    """
    parts = dotted.split(".")
    while parts:
        value = by_key.get(".".join(parts))
        if value is not None:
            return value
        parts.pop()
    return None


def _split_key(text: str) -> list[str]:
    return [p.strip().strip('"') for p in text.split(".")]


def scan_lines(text: str) -> dict[str, int]:
    """Map each dotted key path (and table header) to its 1-based line number."""
    lines: dict[str, int] = {}
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header and not raw.lstrip().startswith("[["):
            table = _split_key(header[1])
            lines.setdefault(".".join(table), number)
            continue
        key = _KEY.match(raw)
        if key:
            lines.setdefault(".".join(table + _split_key(key[1])), number)
    return lines


def read_toml(path: Path) -> TomlDoc:
    """Parse ``path``; raise ConfigError naming the file and line when it is not valid TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create it (an empty file is valid) or pass "
            "another with --config / MOBIZO_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax there") from exc
    return TomlDoc(path=path, values=values, lines=scan_lines(text))


def leaf_paths(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every non-table value in ``values``."""
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out += leaf_paths(value, path)
        else:
            out.append(path)
    return out

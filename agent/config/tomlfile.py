"""Read a TOML file and remember on which line each key was written.

``tomllib`` gives no positions, so a light line scanner maps dotted key paths to line numbers
for error messages. It understands ``[table]`` headers and ``key = value`` / ``a.b = value``
lines — all our config files use — and simply finds nothing for anything fancier.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

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
        parts = dotted.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
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

"""Config errors a user can act on: every problem, its field path, the bad value, and where.

pydantic reports field-bound errors with a location; section and cross-section validators
raise :class:`Problems`, which carries field paths of its own, so every line of the report
reads ``section.field: message (got VALUE)`` — plus ``[FILE:LINE]`` when the value came from
a file we can point into.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config.

    Attributes:
        path: dotted field path, e.g. ``constraints.battery_stop_pct`` ("" = whole config).
        message: what is wrong and, where possible, what to write instead.
        value: the offending value (``_MISSING`` when there is none to show).
        where: ``FILE:LINE``, ``profile NAME (FILE:LINE)`` or ``override`` — or "".
    """

    path: str
    message: str
    value: Any = _MISSING
    where: str = ""

    def __str__(self) -> str:
        text = f"{self.path or 'config'}: {self.message}"
        if self.value is not _MISSING:
            text += f" (got {_show(self.value)})"
        if self.where:
            text += f" [{self.where}]"
        return text


class Problems(ValueError):
    """Raised by section and cross-section validators: several problems at once, each with a
    field path relative to the model that raised it."""

    def __init__(self, items: Sequence[tuple[str, str, Any]]):
        self.items = [Problem(path, msg, value) for path, msg, value in items]
        super().__init__("; ".join(str(p) for p in self.items))


class ConfigValidationError(ConfigError):
    """A config (file, profile or override) is invalid; ``problems`` lists every error."""

    def __init__(self, problems: Sequence[Problem], *, origin: str = "config"):
        self.problems = list(problems)
        self.origin = origin
        lines = [f"{origin} is invalid ({len(self.problems)} error(s)):"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return text if len(text) <= 80 else text[:77] + "..."


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Union members show up as extra loc parts ('literal['auto']', 'list[str]'); drop them so
    # the path is the one the user wrote.
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))


def _model_fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names valid at ``loc`` inside ``model`` (for 'did you mean')."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def problems_from_validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    locate: Any = None,
) -> list[Problem]:
    """Turn a pydantic ValidationError into one :class:`Problem` per error.

    Args:
        exc: the error from validating ``model``.
        model: the root model, used to suggest valid keys for typos.
        locate: optional callable ``(dotted_path) -> str`` giving where a value came from.
    """
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err.get("loc", ())))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            for item in cause.items:
                path = ".".join(p for p in (_dotted(loc), item.path) if p)
                problems.append(Problem(path, item.message, item.value, _where(locate, path)))
            continue
        path = _dotted(loc)
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            valid = _model_fields_at(model, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            if near:
                msg = f"unknown key; did you mean '{near[0]}'?"
            elif valid:
                msg = f"unknown key (valid here: {', '.join(valid)})"
            else:
                msg = "unknown key"
            problems.append(Problem(path, msg, _MISSING, _where(locate, path)))
            continue
        message = str(err.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        value = err.get("input", _MISSING)
        if kind == "missing":
            value = _MISSING
        problems.append(Problem(path, message, value, _where(locate, path)))
    # Union types report one error per member for the same value: fold them into one line.
    merged: dict[str, Problem] = {}
    for p in problems:
        first = merged.get(p.path)
        if first is None:
            merged[p.path] = p
        elif p.message not in first.message:
            merged[p.path] = Problem(p.path, f"{first.message}, or {_lower(p.message)}",
                                     first.value, first.where)
    return list(merged.values())


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


def _where(locate: Any, path: str) -> str:
    if locate is None:
        return ""
    try:
        return str(locate(path) or "")
    except Exception:  # locating is best effort; never hide the real error behind it
        return ""

"""The adapter lifecycle, as plain data and pure functions.

    candidate ──eval passes──▶ evaluated ──publish──▶ active ──next one──▶ retired
        │                          │                    ▲                     │
        └────eval fails────────────┴──▶ rejected        └──────rollback───────┘

A candidate is what a training burst produced; the eval gate either passes it (evaluated) or
rejects it (kept with its numbers for the record, never served). Exactly one version is active;
the one it replaced is retired but kept as the rollback target. Retention (which versions to
delete) is a pure function here so the registry (agent/io/registry.py) only does file I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum

from agent.errors import AdapterError

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
INITIAL_VERSION = "initial"  # the bundle's own adapter/ (B = 0), served when none is active


class AdapterState(StrEnum):
    CANDIDATE = "candidate"
    EVALUATED = "evaluated"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"


TRANSITIONS: dict[AdapterState, frozenset[AdapterState]] = {
    AdapterState.CANDIDATE: frozenset({AdapterState.EVALUATED, AdapterState.REJECTED}),
    AdapterState.EVALUATED: frozenset({AdapterState.ACTIVE, AdapterState.REJECTED}),
    AdapterState.ACTIVE: frozenset({AdapterState.RETIRED}),
    AdapterState.RETIRED: frozenset({AdapterState.ACTIVE}),
    AdapterState.REJECTED: frozenset(),
}


def transition(current: AdapterState, target: AdapterState) -> AdapterState:
    """Return ``target`` if the lifecycle allows ``current → target``, else raise AdapterError."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (terminal)"
        raise AdapterError(f"an adapter that is {current} cannot become {target}; "
                           f"allowed: {allowed}")
    return target


def is_version(name: str) -> bool:
    return VERSION_PATTERN.match(name) is not None


def version_number(name: str) -> int:
    match = VERSION_PATTERN.match(name)
    if match is None:
        raise AdapterError(f"{name!r} is not an adapter version (expected v0001, v0002, ...)")
    return int(match.group(1))


def next_version(existing: Iterable[str]) -> str:
    """The version after every name in ``existing`` (published and rejected alike)."""
    numbers = [version_number(v) for v in existing if is_version(v)]
    return f"v{max(numbers, default=0) + 1:04d}"


def state_of(version: str, *, active: str | None, rejected: bool) -> AdapterState:
    """The lifecycle state of a version stored in the registry."""
    if rejected:
        return AdapterState.REJECTED
    return AdapterState.ACTIVE if version == active else AdapterState.RETIRED


def rollback_target(history: Sequence[str], available: Iterable[str]) -> str | None:
    """The newest earlier active version that still exists, given the activation history.

    ``history`` is oldest first and ends with the currently active version.
    """
    present = set(available)
    current = history[-1] if history else None
    for version in reversed(history[:-1]):
        if version != current and version in present:
            return version
    return None


def versions_to_prune(
    versions: Sequence[str], *, keep: int, protected: Iterable[str]
) -> list[str]:
    """Versions to delete so that ``keep`` remain (newest kept); protected ones never go."""
    ordered = sorted((v for v in versions if is_version(v)), key=version_number)
    guard = {v for v in protected if v}
    excess = len(ordered) - keep
    doomed: list[str] = []
    for version in ordered:  # oldest first
        if excess <= 0:
            break
        if version in guard:
            continue
        doomed.append(version)
        excess -= 1
    return doomed

"""The pure adapter lifecycle."""

from __future__ import annotations

import pytest

from agent.core.adapters import (
    AdapterState,
    next_version,
    rollback_target,
    transition,
    versions_to_prune,
)
from agent.errors import AdapterError


def test_transitions() -> None:
    s = transition(AdapterState.CANDIDATE, AdapterState.EVALUATED)
    s = transition(s, AdapterState.ACTIVE)
    s = transition(s, AdapterState.RETIRED)
    assert transition(s, AdapterState.ACTIVE) is AdapterState.ACTIVE
    with pytest.raises(AdapterError, match="cannot become"):
        transition(AdapterState.REJECTED, AdapterState.ACTIVE)
    with pytest.raises(AdapterError):
        transition(AdapterState.CANDIDATE, AdapterState.ACTIVE)


def test_next_version() -> None:
    assert next_version([]) == "v0001"
    assert next_version(["v0001", "v0009", "initial", "junk"]) == "v0010"


def test_rollback_target() -> None:
    assert rollback_target(["v0001", "v0002", "v0003"], ["v0001", "v0002", "v0003"]) == "v0002"
    assert rollback_target(["v0001", "v0002", "v0003"], ["v0001", "v0003"]) == "v0001"
    assert rollback_target(["v0003"], ["v0003"]) is None


def test_prune_keeps_newest_and_protected() -> None:
    versions = [f"v{i:04d}" for i in range(1, 8)]
    assert versions_to_prune(versions, keep=3, protected=["v0002"]) == [
        "v0001", "v0003", "v0004", "v0005"]
    assert versions_to_prune(versions[:2], keep=3, protected=[]) == []

"""How the command table (:data:`agent.core.commands.COMMANDS`) calls an artifact handler.

The four artifact commands (``push-adapter``, ``push-bundle``, ``artifact-chunk``,
``artifact-status``) are rows of the one command table; their calls land here. A handler
takes artifacts when it implements :class:`ArtifactHandler` (the daemon's fleet side does);
any other (the simulator, an older handler) answers ``rejected`` with why, never a crash.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from agent.core.artifact import (
    ArtifactKind,
    ArtifactStatusArgs,
    ArtifactStatusOutput,
    ChunkArgs,
    ChunkOutput,
    PushArgs,
    PushOutput,
)
from agent.core.command_wire import CommandRejected


class Progress(Protocol):
    """What a long command reports through (:class:`agent.core.commands.JobContext`)."""

    def report(self, fraction: float | None, message: str) -> None: ...

    def should_stop(self) -> bool: ...


@runtime_checkable
class ArtifactHandler(Protocol):
    """The device side of artifact pushes."""

    def push_artifact(self, args: PushArgs, job: Progress) -> PushOutput: ...

    def artifact_chunk(self, args: ChunkArgs) -> ChunkOutput: ...

    def artifact_status(self, args: ArtifactStatusArgs) -> ArtifactStatusOutput: ...


def _handler(h: object) -> ArtifactHandler:
    if not isinstance(h, ArtifactHandler):
        raise CommandRejected("this device does not take artifact pushes (agent too old, or "
                              "run without the daemon); upgrade mobizo-agent on it")
    return h


def _push(kind: ArtifactKind, h: object, a: PushArgs, job: Progress) -> BaseModel:
    if a.manifest.kind != kind:
        raise CommandRejected(f"push-{kind} carries a {a.manifest.kind} manifest; use "
                              f"push-{a.manifest.kind}")
    return _handler(h).push_artifact(a, job)


def call_push_adapter(h: object, a: PushArgs, job: Progress) -> BaseModel:
    """Row call of ``push-adapter``."""
    return _push("adapter", h, a, job)


def call_push_bundle(h: object, a: PushArgs, job: Progress) -> BaseModel:
    """Row call of ``push-bundle``."""
    return _push("bundle", h, a, job)


def call_artifact_chunk(h: object, a: ChunkArgs, job: Progress) -> BaseModel:
    """Row call of ``artifact-chunk``."""
    return _handler(h).artifact_chunk(a)


def call_artifact_status(h: object, a: ArtifactStatusArgs, job: Progress) -> BaseModel:
    """Row call of ``artifact-status``."""
    return _handler(h).artifact_status(a)

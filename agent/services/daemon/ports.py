"""The daemon's ports: what it needs from each adapter, as :class:`typing.Protocol` s.

The composition root (:mod:`agent.app`) plugs in the real adapters (:mod:`agent.io.sysfs`,
:mod:`agent.io.http`, :mod:`agent.io.store`, :mod:`agent.io.registry`); the run code and the
tests see only these few methods, so a test can hand in a real store in ``tmp_path`` and a
fake sysfs tree without building a daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.core.policy import DeviceSnapshot


class Sensors(Protocol):
    """The device's sensors (:class:`agent.io.sysfs.SysfsSensors`)."""

    def snapshot(self) -> DeviceSnapshot: ...


class HttpReply(Protocol):
    """A reply of the inference service (:class:`agent.io.http.Reply`)."""

    status: int

    @property
    def json(self) -> Any: ...


class ServiceLink(Protocol):
    """The inference service's admin API (:class:`agent.io.http.Client`)."""

    def reload_adapter(self) -> HttpReply: ...

    def set_program_resident(self, resident: bool) -> HttpReply: ...

    def health(self) -> Any: ...


class ExampleStore(Protocol):
    """The interaction store as the daemon reads it (:class:`agent.io.store.InteractionStore`)."""

    def counts(self) -> dict[str, Any]: ...

    def examples_since(self, cursor: int = 0, *, split: Any = "train",
                       limit: int = 10_000) -> tuple[list[Any], int]: ...

    def purge(self, before: float | None = None) -> int: ...

    def purges_after(self, purge_id: int) -> tuple[int, int | None]: ...

    def last_seq(self) -> int: ...


class Registry(Protocol):
    """The adapter registry (:class:`agent.io.registry.AdapterRegistry`)."""

    def active(self) -> str | None: ...

    def path_of(self, version: str) -> Path: ...

    def list(self) -> list[Any]: ...

    def publish(self, adapter_dir: Path, *, parent: str | None = None,
                metrics: dict[str, Any] | None = None,
                eval_result: dict[str, Any] | None = None, activate: bool = True) -> str: ...

    def reject(self, adapter_dir: Path, *, parent: str | None = None,
               metrics: dict[str, Any] | None = None,
               eval_result: dict[str, Any] | None = None, reason: str = "") -> str: ...

    def rollback(self, to: str | None = None) -> str: ...

    def pointer(self) -> Any: ...

    def versions(self) -> Sequence[str]: ...

    def forget(self, versions: Any, *, activate: str) -> None: ...

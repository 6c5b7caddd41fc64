"""The adapter registry: versioned adapters on disk and the atomic ``active`` pointer.

Layout under ``state_dir/adapters``::

    v0001/ v0002/ ...        PEFT adapter + manifest.json (bundle id, parent, metrics, eval)
    rejected/v0003/          candidates the eval gate refused, kept with their numbers
    active                   JSON pointer {version, history, switched_at}
    .lock                    flock held by whoever changes the registry

Crash safety (shared/DESIGN.md §5, Mender's stage → verify → commit): a version is staged in
``.tmp-*``, fsynced, renamed into place and the directory fsynced; only then is the pointer
switched, itself by write-temp → fsync → rename → fsync-dir. A process killed at any point
leaves the previous pointer and the previous adapter intact; stale ``.tmp-*`` entries are
swept the next time the registry is opened for writing.

No torch: the daemon uses this module; the inference service watches the pointer file.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.adapters import (
    INITIAL_VERSION,
    AdapterState,
    is_version,
    next_version,
    rollback_target,
    state_of,
    version_number,
    versions_to_prune,
)
from agent.errors import AdapterError
from agent.io.adapter_fs import CONFIG_NAME, WEIGHTS_NAME, AdapterValidator
from agent.io.atomic import TEMP_SUFFIX, atomic_write_text, fsync_path, replace_dir, write_synced

log = logging.getLogger(__name__)

POINTER_NAME = "active"
MANIFEST_NAME = "manifest.json"
REJECTED_DIR = "rejected"
HISTORY_LEN = 32


class AdapterManifest(BaseModel):
    """``adapters/<version>/manifest.json``."""

    model_config = ConfigDict(extra="forbid")

    version: str
    bundle_id: str = Field(description="the bundle this adapter was trained for")
    quantize: str | None = Field(
        default=None, description="base quantization scheme of that bundle (None: not recorded)")
    parent: str | None = Field(default=None, description="version it was trained from")
    created_at: str
    metrics: dict[str, Any] = Field(default_factory=dict, description="training metrics")
    eval: dict[str, Any] | None = Field(default=None, description="eval gate result")
    rejected_reason: str | None = None


class ActivePointer(BaseModel):
    """The ``active`` file: which version serves, and which served before (for rollback)."""

    model_config = ConfigDict(extra="forbid")

    version: str
    history: list[str] = Field(default_factory=list, description="oldest first, ends with version")
    switched_at: float


class AdapterInfo(BaseModel):
    version: str
    state: AdapterState
    manifest: AdapterManifest
    path: str


StageHook = Callable[[str], None]


class AdapterRegistry:
    """Versioned adapters under ``root`` with an atomic active pointer.

    Args:
        root: the registry directory (``state_dir/adapters``).
        validator: checks adapters against the bundle; without one, ``publish`` and
            ``load_flat_b`` cannot validate and refuse to run.
        keep: how many published versions to keep (active and rollback target always kept).
        stage_hook: called with a stage name at each step of a publish ("staged", "renamed",
            "pointer-written", "switched"); tests use it to crash in the middle.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        root: Path,
        *,
        validator: AdapterValidator | None = None,
        keep: int = 5,
        stage_hook: StageHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.validator = validator
        self.keep = max(1, keep)
        self._hook = stage_hook or (lambda stage: None)
        self._clock = clock

    @classmethod
    def in_state_dir(cls, state_dir: Path, **kw: Any) -> AdapterRegistry:
        return cls(Path(state_dir) / "adapters", **kw)

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_NAME

    # --- reads ----------------------------------------------------------------------------

    def pointer(self) -> ActivePointer | None:
        try:
            return ActivePointer.model_validate_json(self.pointer_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise AdapterError(f"{self.pointer_path} is unreadable ({exc}); run "
                               "`mobizo-agent adapters activate VERSION` to repair it") from exc

    def active(self) -> str | None:
        """The active version, or None when the bundle's initial adapter serves."""
        pointer = self.pointer()
        return pointer.version if pointer else None

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and is_version(p.name)]
        return sorted(names, key=version_number)

    def rejected_versions(self) -> list[str]:
        base = self.root / REJECTED_DIR
        if not base.is_dir():
            return []
        return sorted((p.name for p in base.iterdir() if is_version(p.name)), key=version_number)

    def path_of(self, version: str) -> Path:
        if version == INITIAL_VERSION and self.validator is not None:
            return self.validator.initial_dir
        path = self.root / version
        if not (is_version(version) and path.is_dir()):
            raise AdapterError(f"adapter {version!r} is not in {self.root}; "
                               f"known: {', '.join(self.versions()) or 'none'}")
        return path

    def manifest(self, version: str, *, rejected: bool = False) -> AdapterManifest:
        base = self.root / REJECTED_DIR if rejected else self.root
        path = base / version / MANIFEST_NAME
        try:
            return AdapterManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise AdapterError(f"{path} is missing or invalid ({exc})") from exc

    def list(self) -> list[AdapterInfo]:
        """Every stored version (published then rejected), oldest first."""
        active = self.active()
        out = []
        for rejected, names in ((False, self.versions()), (True, self.rejected_versions())):
            for v in names:
                try:
                    m = self.manifest(v, rejected=rejected)
                except AdapterError as exc:
                    log.warning("skipping %s: %s", v, exc)
                    continue
                base = self.root / REJECTED_DIR if rejected else self.root
                out.append(AdapterInfo(version=v, state=state_of(v, active=active,
                                       rejected=rejected), manifest=m, path=str(base / v)))
        return out

    def load_flat_b(self, version: str | None = None) -> tuple[str, np.ndarray]:
        """Validated flat LoRA-B of ``version`` (default: the active one, else the initial).

        Returns (version, flat vector). Raises AdapterError with the reason if unusable.
        """
        if self.validator is None:
            raise AdapterError("this registry has no bundle to validate adapters against")
        version = version or self.active() or INITIAL_VERSION
        if version == INITIAL_VERSION:
            return version, self.validator.load_flat_b(self.validator.initial_dir)
        manifest = self.manifest(version)
        return version, self.validator.load_flat_b(self.path_of(version),
                                                   bundle_id=manifest.bundle_id,
                                                   quantize=manifest.quantize)

    # --- writes ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove what a crashed publish left behind (never a committed version)."""
        for base in (self.root, self.root / REJECTED_DIR):
            if not base.is_dir():
                continue
            for p in base.iterdir():
                if p.name.startswith(".tmp-") or _is_temp_file(p.name):
                    log.info("removing %s left by an interrupted publish", p)
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()

    def _stage(self, adapter_dir: Path, base: Path, version: str,
               manifest: AdapterManifest) -> Path:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                src = Path(adapter_dir) / name
                if src.exists():
                    shutil.copyfile(src, tmp / name)
                    fsync_path(tmp / name)
            write_synced(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
            self._hook("staged")
            final = replace_dir(tmp, base / version)  # a new version: nothing is replaced
        except OSError:
            # a full or read-only disk: give the space of the half-staged copy back now
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._hook("renamed")
        return final

    def _new_manifest(self, version: str, parent: str | None, metrics: dict[str, Any] | None,
                      eval_result: dict[str, Any] | None, reason: str | None = None
                      ) -> AdapterManifest:
        if self.validator is None:
            raise AdapterError("this registry has no bundle to validate adapters against")
        return AdapterManifest(
            version=version, bundle_id=self.validator.bundle_id,
            quantize=self.validator.manifest.quantize, parent=parent,
            created_at=datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            metrics=dict(metrics or {}), eval=eval_result, rejected_reason=reason)

    def publish(
        self,
        adapter_dir: Path,
        *,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        eval_result: dict[str, Any] | None = None,
        activate: bool = True,
    ) -> str:
        """Validate, store and (by default) activate an adapter; returns its new version."""
        if self.validator is None:
            raise AdapterError("this registry has no bundle to validate adapters against")
        self.validator.load_flat_b(adapter_dir)  # refuse before touching the registry
        with self._locked():
            version = next_version(self.versions() + self.rejected_versions())
            manifest = self._new_manifest(version, parent, metrics, eval_result)
            self._stage(adapter_dir, self.root, version, manifest)
            if activate:
                self._switch(version)
            self._prune(also_keep=version)
        log.info("published adapter %s (parent %s)%s", version, parent,
                 ", now active" if activate else "")
        return version

    def reject(
        self,
        adapter_dir: Path,
        *,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        eval_result: dict[str, Any] | None = None,
        reason: str = "",
    ) -> str:
        """Keep a candidate the eval gate refused (under ``rejected/``); never served."""
        with self._locked():
            version = next_version(self.versions() + self.rejected_versions())
            manifest = self._new_manifest(version, parent, metrics, eval_result, reason)
            self._stage(adapter_dir, self.root / REJECTED_DIR, version, manifest)
            for old in versions_to_prune(self.rejected_versions(), keep=self.keep,
                                         protected=()):
                shutil.rmtree(self.root / REJECTED_DIR / old, ignore_errors=True)
        log.info("rejected candidate stored as %s: %s", version, reason)
        return version

    def activate(self, version: str) -> None:
        """Point ``active`` at a stored version, after validating it."""
        self._activate(version, rolling_back=False)

    def _activate(self, version: str, *, rolling_back: bool) -> None:
        if version != INITIAL_VERSION:
            self.path_of(version)
        self.load_flat_b(version)
        with self._locked():
            self._switch(version, rolling_back=rolling_back)

    def rollback(self, to: str | None = None) -> str:
        """Activate ``to``, or the version active before the current one; returns it.

        Rolling back drops the current version from the history, so repeated rollbacks walk
        further back (v3 → v2 → v1 → initial) instead of toggling.
        """
        pointer = self.pointer()
        if to is None:
            history = pointer.history if pointer else []
            to = rollback_target(history, self.versions() + [INITIAL_VERSION])
            if to is None:
                raise AdapterError("nothing to roll back to: no earlier active version is stored")
        self._activate(to, rolling_back=True)
        return to

    def _switch(self, version: str, *, rolling_back: bool = False) -> None:
        pointer = self.pointer()
        # with no pointer the bundle's initial adapter was serving: it is the first rollback
        history = list(pointer.history) if pointer else [INITIAL_VERSION]
        if rolling_back and pointer and history and history[-1] == pointer.version:
            history.pop()
        history = [v for v in history if v != version]
        history = (history + [version])[-HISTORY_LEN:]
        data = ActivePointer(version=version, history=history, switched_at=self._clock())
        atomic_write_text(self.pointer_path, data.model_dump_json(),
                          before_replace=lambda: self._hook("pointer-written"))
        self._hook("switched")

    def forget(self, versions: Collection[str], *, activate: str) -> None:
        """Delete stored versions (published or rejected) for good.

        If the active version is among them, ``activate`` (a version kept, or the initial
        one) becomes active first, so the pointer never names a deleted directory; the
        deleted versions leave the rollback history too.
        """
        gone = set(versions)
        with self._locked():
            pointer = self.pointer()
            if pointer is not None and pointer.version in gone:
                self._switch(activate)
                pointer = self.pointer()
            if pointer is not None and gone & set(pointer.history):
                kept = [v for v in pointer.history if v not in gone] or [pointer.version]
                atomic_write_text(self.pointer_path, pointer.model_copy(
                    update={"history": kept}).model_dump_json())
            for version in sorted(gone):
                for base in (self.root, self.root / REJECTED_DIR):
                    if is_version(version) and (base / version).is_dir():
                        shutil.rmtree(base / version, ignore_errors=True)
        if gone:
            log.info("deleted adapters %s", ", ".join(sorted(gone)))

    def _prune(self, also_keep: str = "") -> None:
        pointer = self.pointer()
        protected = [also_keep] + ([pointer.version] if pointer else [])
        if pointer:
            target = rollback_target(pointer.history, self.versions())
            protected.append(target or "")
        for old in versions_to_prune(self.versions(), keep=self.keep, protected=protected):
            log.info("pruning adapter %s (keep=%d)", old, self.keep)
            shutil.rmtree(self.root / old, ignore_errors=True)


def _is_temp_file(name: str) -> bool:
    """A temp file an interrupted atomic write left (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)

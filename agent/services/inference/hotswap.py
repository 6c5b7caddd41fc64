"""The adapter the service serves, and how it changes without a restart.

:class:`AdapterSlot` holds ``(version, flat LoRA-B)``. The generation worker reads it once
per request when it dequeues the request, so a request runs start to end on one adapter;
a switch only replaces the tuple (one reference assignment), so the next request gets the new
adapter and nothing in flight is disturbed. Before a switch the new adapter is validated
(bundle id, file integrity, shapes, LoRA-A): a bad one is refused with a logged reason and
the old one keeps serving.

:class:`PointerWatcher` notices file-only publishes by polling the registry's ``active``
pointer with ``os.stat`` (inode + mtime + size: the atomic rename always gives a new inode),
which costs a syscall per interval. The daemon also calls ``POST /v1/admin/reload-adapter``
right after publishing, which switches at once.

:class:`PostSwitchHook` lets users who serve with another engine follow along: after each
switch it runs a command (env ``MOBIZO_ADAPTER_VERSION``, ``MOBIZO_ADAPTER_PATH``,
``MOBIZO_BUNDLE_ID``) and/or POSTs JSON ``{version, path, bundle_id, lora_name, lora_path}``
to a URL — the last two are the body of vLLM's ``/v1/load_lora_adapter``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.core.adapters import INITIAL_VERSION
from agent.errors import AdapterError
from agent.io.adapter_fs import WEIGHTS_NAME
from agent.io.registry import MANIFEST_NAME, AdapterRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    version: str
    switched: bool
    error: str | None = None
    seconds: float = 0.0


class PostSwitchHook:
    """Runs a command and/or POSTs to a URL after every adapter switch, in the background."""

    def __init__(self, command: Sequence[str] | None = None, url: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.command = list(command) if command else None
        self.url = url
        self.timeout_s = timeout_s

    def __call__(self, version: str, path: Path, bundle_id: str) -> None:
        if self.command is None and self.url is None:
            return
        threading.Thread(target=self._run, args=(version, path, bundle_id),
                         name="post-switch-hook", daemon=True).start()

    def _run(self, version: str, path: Path, bundle_id: str) -> None:
        if self.command is not None:
            env = {**os.environ, "MOBIZO_ADAPTER_VERSION": version,
                   "MOBIZO_ADAPTER_PATH": str(path), "MOBIZO_BUNDLE_ID": bundle_id}
            try:
                done = subprocess.run(self.command, env=env, timeout=self.timeout_s,
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    log.warning("post-switch command exited %d: %s", done.returncode,
                                done.stderr.strip()[-500:])
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("post-switch command failed: %s", exc)
        if self.url is not None:
            body = json.dumps({"version": version, "path": str(path), "bundle_id": bundle_id,
                               "lora_name": version, "lora_path": str(path)}).encode()
            req = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
            except OSError as exc:
                log.warning("post-switch POST to %s failed: %s", self.url, exc)


class AdapterSlot:
    """The currently served adapter; switched between requests, never during one."""

    def __init__(self, registry: AdapterRegistry, *,
                 hook: Callable[[str, Path, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self._hook = hook
        self._clock = clock
        self._lock = threading.Lock()  # serialises reloads (watcher vs control request)
        version, flat = registry.load_flat_b()
        self._current: tuple[str, np.ndarray] = (version, flat)
        self.last_error: str | None = None
        self.switches: list[tuple[float, str]] = [(clock(), version)]
        # validated adapters by version, keyed by their files' identity: a rollback to a
        # version served before swaps in microseconds instead of re-reading and re-checking
        self._validated: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
        self.cache_size = 8

    def current(self) -> tuple[str, np.ndarray]:
        """(version, flat LoRA-B): one atomic read, taken once per request."""
        return self._current

    @property
    def version(self) -> str:
        return self._current[0]

    def reload(self) -> ReloadResult:
        """Serve whatever the registry's pointer names now, if it validates."""
        t0 = time.perf_counter()
        with self._lock:
            try:
                wanted = self.registry.active() or INITIAL_VERSION
            except AdapterError as exc:
                return self._refuse(str(exc), t0)
            if wanted == self._current[0]:
                return ReloadResult(wanted, False, None, time.perf_counter() - t0)
            try:
                version, flat = self._load(wanted)
            except AdapterError as exc:
                return self._refuse(f"refused adapter {wanted}: {exc}", t0)
            self._current = (version, flat)
            self.last_error = None
            self.switches.append((self._clock(), version))
            del self.switches[:-256]
        log.info("now serving adapter %s", version)
        if self._hook is not None and self.registry.validator is not None:
            self._hook(version, self.registry.path_of(version), self.registry.validator.bundle_id)
        return ReloadResult(version, True, None, time.perf_counter() - t0)

    def rebind(self, registry: AdapterRegistry) -> str:
        """Serve from ``registry`` (validated against another bundle) from now on.

        The active adapter if it fits the new bundle, else the bundle's own (``initial``,
        with ``last_error`` saying why): an adapter trained for the old bundle cannot serve
        on the new one. Returns the version now served.
        """
        with self._lock:
            try:
                version, flat = registry.load_flat_b()
                error = None
            except AdapterError as exc:
                version, flat = registry.load_flat_b(INITIAL_VERSION)
                error = f"the active adapter does not fit the new bundle ({exc}); serving " \
                        "the bundle's own"
                log.warning("%s", error)
            self.registry = registry
            self._validated.clear()  # validated against the old bundle's LoRA-A
            self._current = (version, flat)
            self.last_error = error
            self.switches.append((self._clock(), version))
            del self.switches[:-256]
        return version

    def _file_key(self, version: str) -> tuple[int, ...]:
        path = self.registry.path_of(version)
        key: list[int] = []
        for name in (WEIGHTS_NAME, MANIFEST_NAME):
            try:
                st = os.stat(path / name)
            except FileNotFoundError:
                key += [0, 0, 0]
                continue
            key += [st.st_ino, st.st_mtime_ns, st.st_size]
        return tuple(key)

    def _load(self, version: str) -> tuple[str, np.ndarray]:
        key = self._file_key(version)
        hit = self._validated.get(version)
        if hit is not None and hit[0] == key:
            return version, hit[1]
        version, flat = self.registry.load_flat_b(version)
        self._validated[version] = (key, flat)
        while len(self._validated) > self.cache_size:
            self._validated.pop(next(iter(self._validated)))
        return version, flat

    def _refuse(self, reason: str, t0: float) -> ReloadResult:
        self.last_error = reason
        log.error("%s; still serving %s", reason, self._current[0])
        return ReloadResult(self._current[0], False, reason, time.perf_counter() - t0)


class PointerWatcher:
    """Polls the registry's ``active`` pointer and reloads the slot when it changes."""

    def __init__(self, slot: AdapterSlot, interval_s: float = 0.25) -> None:
        self.slot = slot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="adapter-watcher", daemon=True)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.slot.registry.pointer_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        seen = self._stat()
        while not self._stop.wait(self.interval_s):
            now = self._stat()
            if now != seen:
                seen = now
                try:
                    self.slot.reload()
                except Exception:  # never let the watcher die; the old adapter keeps serving
                    log.exception("adapter reload failed")

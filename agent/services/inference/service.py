"""Composition root of the inference service: builds the parts, starts them, stops them.

Start order: adapter slot (validates the active adapter, falling back to the bundle's own),
program, store, worker, watchers, listeners. Stop in reverse. ``mobizo-agent serve`` runs it.
When ``bundle_dir`` is a link that moves (``push-bundle``), :meth:`InferenceService.follow_bundle`
serves the new bundle in place (agent/services/inference/bundle_switch.py).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.service import TOKEN_FILE_NAME
from agent.core.bundle import BundleManifest
from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.io.engine import EngineProgram
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.io.token_file import ensure_token
from agent.services.inference.bundle_switch import BundleLinkWatcher, ServingGate, resolved
from agent.services.inference.connections import ConnectionFront
from agent.services.inference.generation import Generator, InferProgramLike, TextCodec
from agent.services.inference.guard import RateWindow, allowed_hosts
from agent.services.inference.hotswap import AdapterSlot, PointerWatcher, PostSwitchHook
from agent.services.inference.metrics import ServiceMetrics
from agent.services.inference.prompt_cache import PromptCache
from agent.services.inference.residency import ReleasableProgram
from agent.services.inference.server import ApiContext, Handler, serve_connection
from agent.services.inference.settings import ServeConfig, listen_host
from agent.services.inference.worker import GenerationWorker

log = logging.getLogger(__name__)


class InferenceService:
    """Everything ``serve`` runs, wired together. Build, :meth:`start`, :meth:`stop`.

    Args:
        bundle_dir: the model bundle.
        state_dir: holds ``interactions.sqlite3`` and ``adapters/``.
        config: service settings.
        program_factory: builds the inference program (default: ExecuTorch's ``InferProgram``
            in an engine child process, agent/io/engine.py, or in this process with
            ``engine="inline"``).
    """

    def __init__(
        self,
        bundle_dir: Path,
        state_dir: Path,
        config: ServeConfig | None = None,
        *,
        program_factory: Callable[[Path, int | None], InferProgramLike] | None = None,
    ) -> None:
        self.config = config or ServeConfig()
        self.bundle_dir, self.state_dir = Path(bundle_dir), Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # what the link names now: every part below reads this one directory, so a switch
        # of the link while they load (or a program loaded again after a release) cannot
        # mix two bundles
        self.bundle_path = resolved(self.bundle_dir)
        self.manifest = read_manifest(self.bundle_path)
        self.bundle_id = self.manifest.bundle_id
        self.model_name = _model_name(self.manifest.base.source)
        self.registry = self._registry_for(self.bundle_path, self.manifest)
        hook = PostSwitchHook(self.config.post_switch_command, self.config.post_switch_url)
        # GET /metrics: read at each scrape, so the worker may come later
        self.metrics = ServiceMetrics(queue_depth=lambda: self.worker.depth,
                                      adapter_version=lambda: self.slot.version)
        self.slot = AdapterSlot(self.registry, hook=self.metrics.counting_swaps(hook))
        # the ExecuTorch pool is sized before the program loads ([inference] threads): here
        # inline, by the engine child in process mode (it reports its size when ready); an
        # injected program has no such pool (None)
        inline = program_factory is None and self.config.engine == "inline"
        self.runtime_threads: int | None = (
            _size_thread_pool(self.config.threads) if inline else None)
        self._factory = program_factory or (
            _executorch_program if inline else self._engine_program)
        prompt_cache = PromptCache(self.config.prompt_cache_slots)
        # released while a training burst runs (residency.py): its KV cache goes with it
        self.program = ReleasableProgram(
            functools.partial(self._factory, self.bundle_path, self.config.threads),
            on_release=prompt_cache.invalidate)
        self.codec = TextCodec.for_bundle(self.bundle_path, self.manifest)
        self.generator = Generator(self.program, self.codec,
                                   context_cap=self.config.max_context,
                                   prompt_cache=prompt_cache)
        self.store: InteractionStore | None = (
            InteractionStore.in_state_dir(self.state_dir, self.config.store)
            if self.config.store.capture else None)
        self.worker = GenerationWorker(self.generator, self.slot, self.store,
                                       max_queue=self.config.max_queue,
                                       program_lock=self.program.lock)
        self.watcher = PointerWatcher(self.slot, self.config.watch_interval_s)
        self.gate = ServingGate()  # generation requests vs a bundle switch
        self.bundle_watcher = BundleLinkWatcher(self.bundle_dir, lambda: self.bundle_path,
                                                self.follow_bundle,
                                                self.config.watch_interval_s)
        self.bundle_switches: list[tuple[float, str]] = [(time.time(), self.bundle_id)]
        self.bundle_error: str | None = None
        self.started_at = int(time.time())
        self.last_request_at: float | None = None
        # the bearer token TCP clients send (None: not required, a loopback listen by config)
        self.token_path = self.config.token_file or self.state_dir / TOKEN_FILE_NAME
        self.token: str | None = None
        self._front: ConnectionFront | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound TCP address (useful with port 0)."""
        return self._address

    def _listen(self) -> ConnectionFront:
        """The connection front on the configured TCP address and unix socket (not started)."""
        cfg = self.config
        if cfg.require_token and cfg.listen:
            self.token = ensure_token(self.token_path)  # TokenFileError says what to fix
        host = listen_host(cfg.listen) if cfg.listen else None
        ctx = ApiContext(self, self.token, allowed_hosts(host, cfg.allowed_hosts),
                         RateWindow(cfg.corrections_per_minute))
        front = ConnectionFront(
            functools.partial(serve_connection, Handler, ctx),
            handler_threads=cfg.handler_threads, max_connections=cfg.max_connections,
            read_timeout_s=cfg.read_timeout_s)
        if cfg.listen and host is not None:
            self._address = front.listen_tcp(host, int(cfg.listen.rpartition(":")[2]))
        if cfg.unix_socket:
            front.listen_unix(Path(cfg.unix_socket), 0o660)  # the group is the credential
        return front

    def start(self) -> None:
        # The generation thread holds the GIL between runtime calls; a shorter switch
        # interval (default 5 ms) lets HTTP threads (health, reload, accept) in sooner.
        sys.setswitchinterval(self.config.gil_switch_interval_s)
        front = self._listen()  # before the threads: a bad token file or port fails fast
        self.worker.start()
        self.watcher.start()
        self.bundle_watcher.start()
        front.start()
        self._front = front
        log.info("serving %s (bundle %s, adapter %s) on %s%s", self.model_name, self.bundle_id,
                 self.slot.version, self.address,
                 f" and {self.config.unix_socket}" if self.config.unix_socket else "")

    def stop(self) -> None:
        if self._front is not None:
            self._front.stop()
        if self.config.unix_socket and Path(self.config.unix_socket).exists():
            Path(self.config.unix_socket).unlink()
        self.bundle_watcher.stop()
        self.watcher.stop()
        self.worker.stop()
        self.program.close()  # the engine child exits with the service
        if self.store is not None:
            self.store.close()

    def alive(self) -> bool:
        """Whether every thread of the service still runs (the systemd watchdog asks)."""
        threads = [self.worker._thread, self.watcher._thread, self.bundle_watcher._thread,
                   *(self._front._threads if self._front is not None else [])]
        return all(t.is_alive() for t in threads)

    def retry_after_s(self) -> int:
        """A Retry-After guess: about one queued generation per second."""
        return max(1, min(60, self.worker.depth))

    def health(self) -> dict[str, Any]:
        store = self.store
        return {
            "status": "ok",
            "model": self.model_name,
            "bundle_id": self.bundle_id,
            "bundle": {"path": str(self.bundle_path), "switched_at": self.bundle_switches[-1][0],
                       "switches": len(self.bundle_switches) - 1,
                       "last_error": self.bundle_error},
            "adapter": {"version": self.slot.version, "last_error": self.slot.last_error,
                        "switched_at": self.slot.switches[-1][0]},
            "queue_depth": self.worker.depth,
            "busy": self.worker.busy,
            "last_request_at": self.last_request_at,
            "served": self.worker.served,
            "failed": self.worker.failed,
            "capture": store is not None,
            "runtime_threads": self.runtime_threads,
            "program": self.program.status(),
            "store": None if store is None else {
                "pending": store.pending, "evicted": store.evicted,
                "dropped_oversize": store.dropped_oversize,
                "dropped_full_queue": store.dropped_full_queue},
        }

    def _engine_program(self, bundle_dir: Path, threads: int | None) -> InferProgramLike:
        """The program in an engine child process (agent/io/engine.py); its pool's size is
        what ``/health`` reports as ``runtime_threads``."""
        program = EngineProgram(bundle_dir, threads)
        self.runtime_threads = program.threads
        return program

    def _registry_for(self, bundle: Path, manifest: BundleManifest) -> AdapterRegistry:
        """The adapter registry in the state dir, validated against ``bundle``."""
        return AdapterRegistry.in_state_dir(
            self.state_dir, validator=AdapterValidator(bundle, manifest),
            keep=self.config.adapters_kept)

    def follow_bundle(self, target: Path) -> None:
        """Serve the bundle at ``target`` (the link moved): program, tokenizer, manifest,
        adapter registry; the prompt cache starts empty.

        What can fail without touching the serving bundle (its manifest, tokenizer, adapter
        registry) is read first. Then the gate waits for the requests in flight, the old
        program goes and the new one loads (one copy of the weights at a time); a request
        arriving meanwhile waits and is answered by the new bundle. If the new program
        fails to load, the old bundle stays (its program loads again on the next request).
        """
        t0 = time.perf_counter()
        try:
            manifest = read_manifest(target)
            codec = TextCodec.for_bundle(target, manifest)
            registry = self._registry_for(target, manifest)
            with self.gate.exclusive():
                self.program.replace(functools.partial(self._factory, target,
                                                       self.config.threads))
                self.generator.use_codec(codec)  # and an empty prompt cache
                self.codec, self.manifest, self.registry = codec, manifest, registry
                # the adapter first: /health must not show the new bundle with the old one
                version = self.slot.rebind(registry)
                self.bundle_path, self.bundle_id = target, manifest.bundle_id
                self.model_name = _model_name(manifest.base.source)
                self.bundle_error = None
                self.bundle_switches.append((time.time(), self.bundle_id))
                del self.bundle_switches[:-256]
        except Exception as exc:
            self.bundle_error = f"could not serve the bundle at {target}: {exc}"
            raise
        log.info("now serving bundle %s (%s, adapter %s); switched in %.2f s", self.bundle_id,
                 target, version, time.perf_counter() - t0)


def _model_name(source: str) -> str:
    if source.startswith("preset:"):
        return (source.split(":", 1)[1].split() or ["starter"])[0]
    return Path(source).name or source


def _size_thread_pool(threads: int | None) -> int:
    from agent.io.runtime import size_thread_pool

    return size_thread_pool(threads)


def _executorch_program(bundle_dir: Path, threads: int | None) -> InferProgramLike:
    from agent.io.runtime import InferProgram

    return InferProgram(bundle_dir, threads=threads)  # type: ignore[no-any-return]

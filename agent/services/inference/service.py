"""Composition root of the inference service: builds the parts, starts them, stops them.

Start order: adapter slot (validates the active adapter, falling back to the bundle's own),
program, store, worker, watcher, listeners. Stop in reverse. ``mobizo-agent serve`` runs it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.services.inference.generation import Generator, InferProgramLike, TextCodec
from agent.services.inference.hotswap import AdapterSlot, PointerWatcher, PostSwitchHook
from agent.services.inference.server import Handler, TcpServer, UnixServer
from agent.services.inference.settings import ServeConfig
from agent.services.inference.worker import GenerationWorker

log = logging.getLogger(__name__)


class InferenceService:
    """Everything ``serve`` runs, wired together. Build, :meth:`start`, :meth:`stop`.

    Args:
        bundle_dir: the model bundle.
        state_dir: holds ``interactions.sqlite3`` and ``adapters/``.
        config: service settings.
        program_factory: builds the inference program (default: ExecuTorch ``InferProgram``).
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
        self.manifest = read_manifest(self.bundle_dir)
        self.bundle_id = self.manifest.bundle_id
        self.model_name = _model_name(self.manifest.base.source)
        validator = AdapterValidator(self.bundle_dir, self.manifest)
        self.registry = AdapterRegistry.in_state_dir(
            self.state_dir, validator=validator, keep=self.config.adapters_kept)
        hook = PostSwitchHook(self.config.post_switch_command, self.config.post_switch_url)
        self.slot = AdapterSlot(self.registry, hook=hook)
        factory = program_factory or _executorch_program
        self.program = factory(self.bundle_dir, self.config.threads)
        tok = self.manifest.tokenizer
        self.codec = TextCodec.from_dir(self.bundle_dir / tok.path, [tok.eos_token_id])
        self.generator = Generator(self.program, self.codec,
                                   context_cap=self.config.max_context)
        self.store: InteractionStore | None = (
            InteractionStore.in_state_dir(self.state_dir, self.config.store)
            if self.config.store.capture else None)
        self.worker = GenerationWorker(self.generator, self.slot, self.store,
                                       max_queue=self.config.max_queue)
        self.watcher = PointerWatcher(self.slot, self.config.watch_interval_s)
        self.started_at = int(time.time())
        self.last_request_at: float | None = None
        self._servers: list[Any] = []
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound TCP address (useful with port 0)."""
        for s in self._servers:
            if isinstance(s, TcpServer):
                host, port = s.server_address[:2]
                return str(host), int(port)
        return None

    def start(self) -> None:
        # The generation thread holds the GIL between runtime calls; a shorter switch
        # interval (default 5 ms) lets HTTP threads (health, reload, accept) in sooner.
        sys.setswitchinterval(self.config.gil_switch_interval_s)
        self.worker.start()
        self.watcher.start()
        if self.config.listen:
            host, _, port = self.config.listen.rpartition(":")
            self._servers.append(
                TcpServer((host.strip("[]") or "127.0.0.1", int(port)), Handler))
        if self.config.unix_socket:
            path = Path(self.config.unix_socket)
            if path.exists():
                path.unlink()  # a stale socket from a killed run
            self._servers.append(UnixServer(str(path), Handler))
            os.chmod(path, 0o660)
        for server in self._servers:
            server.app = self
            t = threading.Thread(target=server.serve_forever, name="http", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("serving %s (bundle %s, adapter %s) on %s%s", self.model_name, self.bundle_id,
                 self.slot.version, self.address,
                 f" and {self.config.unix_socket}" if self.config.unix_socket else "")

    def stop(self) -> None:
        for server in reversed(self._servers):
            server.shutdown()
            server.server_close()
        if self.config.unix_socket and Path(self.config.unix_socket).exists():
            Path(self.config.unix_socket).unlink()
        self.watcher.stop()
        self.worker.stop()
        if self.store is not None:
            self.store.close()

    def retry_after_s(self) -> int:
        """A Retry-After guess: about one queued generation per second."""
        return max(1, min(60, self.worker.depth))

    def health(self) -> dict[str, Any]:
        store = self.store
        return {
            "status": "ok",
            "model": self.model_name,
            "bundle_id": self.bundle_id,
            "adapter": {"version": self.slot.version, "last_error": self.slot.last_error,
                        "switched_at": self.slot.switches[-1][0]},
            "queue_depth": self.worker.depth,
            "busy": self.worker.busy,
            "last_request_at": self.last_request_at,
            "served": self.worker.served,
            "failed": self.worker.failed,
            "capture": store is not None,
            "store": None if store is None else {
                "pending": store.pending, "evicted": store.evicted,
                "dropped_oversize": store.dropped_oversize,
                "dropped_full_queue": store.dropped_full_queue},
        }


def _model_name(source: str) -> str:
    if source.startswith("preset:"):
        return (source.split(":", 1)[1].split() or ["starter"])[0]
    return Path(source).name or source


def _executorch_program(bundle_dir: Path, threads: int | None) -> InferProgramLike:
    from agent.io.runtime import InferProgram

    return InferProgram(bundle_dir, threads=threads)  # type: ignore[no-any-return]

"""Artifact pushes on the device: stage, verify, activate, health window, commit or roll back.

:class:`ArtifactService` is the daemon's :class:`~agent.core.artifact_calls.ArtifactHandler`.
A ``push-adapter`` / ``push-bundle`` job (the fleet link's job thread) checks the manifest
against this device (bundle id, LoRA layout, chunk size against the payload limit), then the
disk, then opens the staging area and waits for the chunks, which arrive as short
``artifact-chunk`` commands on the link's worker thread; the controller asks
``artifact-status`` which ones are still missing. Once all are there: assemble and verify
(every hash, then the layout: an adapter through the registry's validator, a bundle through
its manifest), activate on the main loop, watch the health window, then commit, or roll back
by itself and fail the job with why. Every step is journaled first
(:mod:`agent.services.daemon.artifact_journal`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.adapters import INITIAL_VERSION
from agent.core.artifact import (
    ArtifactJournal,
    ArtifactManifest,
    ArtifactStatusArgs,
    ArtifactStatusOutput,
    ChunkArgs,
    ChunkOutput,
    PushArgs,
    PushOutput,
    chunk_fits,
    largest_chunk,
)
from agent.core.artifact_calls import Progress
from agent.core.command_wire import CommandFailed, CommandRejected
from agent.errors import AdapterError, BundleError
from agent.io.bundle_files import read_manifest
from agent.io.registry import AdapterRegistry
from agent.services.daemon import artifact_activate as act
from agent.services.daemon.artifact_eval import EvalGate
from agent.services.daemon.artifact_health import HealthService, HealthWindow, Unhealthy
from agent.services.daemon.artifact_journal import JOURNAL_NAME, Journal, artifacts_root
from agent.services.daemon.artifact_staging import ArtifactInvalid, Staging, check_disk
from agent.services.daemon.commands import CommandQueue, Reply
from agent.services.daemon.loop import Daemon
from agent.services.daemon.ports import ExampleStore

log = logging.getLogger(__name__)


@dataclass
class ArtifactService:
    """The device side of artifact pushes.

    Attributes:
        state_dir: the daemon's state directory (``artifacts/`` and ``bundles/`` under it).
        registry: the adapter registry (validated against the serving bundle).
        main_loop: runs activation and rollback on the daemon's main loop.
        on_active: (main loop) tell the service and the status which adapter serves now.
        on_bundle_switch: (main loop) before a bundle switch: the run in progress trained on
            the old bundle, so it ends (its examples stay for the next run).
        service: the inference service client for the health window (None: none).
        bundle_dir: ``[service] bundle_dir`` (a bundle push needs it to be the managed link).
        max_payload_bytes: the command payload limit (``mqtt.command_max_payload_bytes``).
        eval_gate: an adapter's held-out loss against the one it replaced (None: not run).
        poll_s: how often the job looks for new chunks and the window polls the service.
    """

    state_dir: Path
    registry: AdapterRegistry
    main_loop: CommandQueue
    on_active: Callable[[str], None]
    service: Callable[[], HealthService | None]
    bundle_dir: Path
    max_payload_bytes: int
    on_bundle_switch: Callable[[], None] = lambda: None
    eval_gate: EvalGate | None = None
    poll_s: float = 0.5
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    _current: Staging | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _arrived: threading.Event = field(default_factory=threading.Event, init=False)

    @property
    def journal(self) -> Journal:
        return Journal(artifacts_root(self.state_dir) / JOURNAL_NAME, self.clock)

    # --- short commands (the link's worker thread) ------------------------------------------
    def _staging(self, artifact_id: str) -> Staging:
        with self._lock:
            staging = self._current
        if staging is None or staging.manifest.artifact_id != artifact_id:
            raise CommandRejected(f"no push of {artifact_id} is receiving chunks here; send its "
                                  "push-adapter / push-bundle command first")
        return staging

    def artifact_chunk(self, args: ChunkArgs) -> ChunkOutput:
        """Store one chunk (hash checked); a repeat is answered, not stored twice."""
        staging = self._staging(args.artifact_id)
        stored = staging.store(args.index, args.payload())
        self._arrived.set()
        return ChunkOutput(artifact_id=args.artifact_id, index=args.index, stored=stored,
                           missing=len(staging.missing()))

    def artifact_status(self, args: ArtifactStatusArgs) -> ArtifactStatusOutput:
        """Which chunks the push still needs (``not_receiving``: no such push is open)."""
        with self._lock:
            staging = self._current
        if staging is None or staging.manifest.artifact_id != args.artifact_id:
            return ArtifactStatusOutput(artifact_id=args.artifact_id, state="not_receiving")
        missing = staging.missing()
        return ArtifactStatusOutput(artifact_id=args.artifact_id, state="receiving",
                                    missing=missing[:2000],
                                    received=staging.manifest.chunks - len(missing))

    # --- the job ----------------------------------------------------------------------------
    def push_artifact(self, args: PushArgs, job: Progress) -> PushOutput:
        """Stage, verify, activate, watch, then commit or roll back (see the module doc)."""
        manifest = args.manifest
        self._refuse_early(manifest)
        root = artifacts_root(self.state_dir)
        check_disk(root, manifest)
        entry = self.journal.write(manifest.artifact_id, manifest.kind, "staging")
        staging = Staging(root / manifest.artifact_id, manifest)
        staging.open()
        with self._lock:
            self._current = staging
        try:
            self._receive(staging, args, job)
        finally:
            with self._lock:
                self._current = None
        try:
            files = staging.assemble()
            self._verify_layout(files, manifest)
        except (ArtifactInvalid, AdapterError, BundleError) as exc:
            self.journal.advance(entry, "refused", reason=str(exc))
            staging.remove()
            raise CommandRejected(f"{exc}; nothing was changed") from exc
        job.report(0.9, "verified; activating")
        try:
            return self._activate_and_watch(entry, staging, args, job)
        finally:
            staging.remove()  # committed or rolled back: the staged copy is no use any more

    def _refuse_early(self, manifest: ArtifactManifest) -> None:
        """What can be refused from the manifest alone, before any disk is touched."""
        if not chunk_fits(manifest.chunk_size, self.max_payload_bytes):
            raise CommandRejected(
                f"chunks of {manifest.chunk_size} bytes do not fit this device's command "
                f"payload limit ({self.max_payload_bytes} bytes, mqtt.command_max_payload_"
                f"bytes); push with --chunk-size {largest_chunk(self.max_payload_bytes)} or less")
        validator = self.registry.validator
        if manifest.kind == "adapter":
            assert validator is not None and manifest.lora is not None
            if manifest.bundle_id != validator.bundle_id:
                raise CommandRejected(
                    f"the adapter was trained for bundle {manifest.bundle_id}; this device "
                    f"serves bundle {validator.bundle_id}; push an adapter trained on it")
            want = validator.manifest.lora
            got = manifest.lora
            if (got.rank, got.alpha, tuple(got.targets), tuple(got.layers)) != (
                    want.rank, want.alpha, tuple(want.targets), tuple(want.layers)):
                raise CommandRejected(
                    f"the adapter's LoRA layout (rank {got.rank}, alpha {got.alpha}, "
                    f"{got.targets} on layers {got.layers}) is not this bundle's (rank "
                    f"{want.rank}, alpha {want.alpha}, {list(want.targets)} on layers "
                    f"{list(want.layers)})")
            return
        link = act.bundle_link(self.state_dir)
        if Path(self.bundle_dir) != link:
            raise CommandRejected(
                f"push-bundle switches the link {link}, but [service] bundle_dir is "
                f"{self.bundle_dir}; set bundle_dir = \"{link}\" (a link to the bundle "
                "directory) on this device first")
        if validator is not None and manifest.bundle_id == validator.bundle_id:
            raise CommandRejected(f"this device already serves bundle {manifest.bundle_id}")

    def _receive(self, staging: Staging, args: PushArgs, job: Progress) -> None:
        total = staging.manifest.chunks
        deadline = self.monotonic() + args.transfer_timeout_s
        job.report(0.0, f"staging: {total - len(staging.missing())}/{total} chunks "
                        f"({staging.reused} kept from before)")
        while missing := len(staging.missing()):
            if job.should_stop():
                raise CommandFailed("canceled while staging; nothing was activated (the "
                                    "chunks stay staged for a re-push)")
            if self.monotonic() > deadline:
                raise CommandFailed(f"{missing} of {total} chunks did not arrive within "
                                    f"{args.transfer_timeout_s:.0f} s; nothing was activated")
            self._arrived.wait(self.poll_s)
            self._arrived.clear()
            done = total - len(staging.missing())
            job.report(0.8 * done / total, f"staging: {done}/{total} chunks")

    def _verify_layout(self, files: Path, manifest: ArtifactManifest) -> None:
        if manifest.kind == "adapter":
            validator = self.registry.validator
            assert validator is not None
            validator.load_flat_b(files, bundle_id=manifest.bundle_id)
            return
        bundle = read_manifest(files)
        if bundle.bundle_id != manifest.bundle_id:
            raise BundleError(f"the bundle's own manifest says bundle id {bundle.bundle_id}, "
                              f"the push said {manifest.bundle_id}")

    def _on_loop(self, name: str, fn: Callable[[], Reply]) -> Reply:
        cmd = self.main_loop.call(name, fn, timeout=300.0)
        if cmd.error is not None:
            raise CommandFailed(cmd.error)
        return cmd.result or {}

    def _activate_and_watch(self, entry: ArtifactJournal, staging: Staging, args: PushArgs,
                            job: Progress) -> PushOutput:
        manifest = args.manifest
        window = HealthWindow(self.service(), args.health_window_s, self.poll_s,
                              should_stop=job.should_stop)
        adapter = manifest.kind == "adapter"
        link = act.bundle_link(self.state_dir)
        active = self.registry.active() or INITIAL_VERSION
        previous = active if adapter else act.current_bundle(link)
        entry = self.journal.advance(entry, "activating", previous=previous,
                                     previous_adapter=None if adapter else active)

        def activate() -> Reply:
            if adapter:
                version = act.activate_adapter(self.registry, staging.files_dir,
                                               manifest.artifact_id)
                self.on_active(version)
                return {"new": version}
            return {"new": self._switch_bundle(link, staging.files_dir, manifest.bundle_id)}

        try:
            new = str(self._on_loop("push-activate", activate)["new"])
        except CommandFailed as exc:  # half done, perhaps: undo whatever of it is there
            self._rollback(entry, previous, manifest.bundle_id)
            self.journal.advance(entry, "rolled_back", reason=str(exc))
            raise CommandFailed(f"activation failed ({exc}); {previous} serves") from exc
        entry = self.journal.advance(entry, "health", new=new)
        job.report(0.95, f"activated {new}; health window of {args.health_window_s:.0f} s")
        try:
            seen = window.adapter(new) if adapter else window.bundle(manifest.bundle_id)
            if adapter:
                seen += "; " + self._eval(new, str(previous), staging, job)
        except Unhealthy as exc:
            self._rollback(entry, previous, new)
            self.journal.advance(entry, "rolled_back", reason=str(exc))
            raise CommandFailed(f"rolled back to {previous}: {exc}") from exc
        self.journal.advance(entry, "committed", reason=seen)
        log.info("push %s committed: %s", manifest.artifact_id, seen)
        return PushOutput(artifact_id=manifest.artifact_id, kind=manifest.kind,
                          version=new if adapter else None, bundle_id=manifest.bundle_id,
                          bytes=manifest.total_size, chunks_reused=staging.reused, health=seen)

    def _switch_bundle(self, link: Path, files: Path, bundle_id: str) -> str:
        """(main loop) The old bundle's run ends and its adapter steps aside (it does not fit
        the new bundle), then the link switches and the registry validates against it."""
        self.on_bundle_switch()
        if (self.registry.active() or INITIAL_VERSION) != INITIAL_VERSION:
            self.registry.activate(INITIAL_VERSION)
            self.on_active(INITIAL_VERSION)
        name = act.activate_bundle(link, files, bundle_id)
        act.revalidate(self.registry, link)
        return name

    def _eval(self, new: str, previous: str, staging: Staging, job: Progress) -> str:
        if self.eval_gate is None:
            return "eval gate not configured"
        return self.eval_gate.check(self.registry.path_of(new), self.registry.path_of(previous),
                                    staging.root / "eval", job.should_stop)

    def _rollback(self, entry: ArtifactJournal, previous: str | None, new: str) -> None:
        def undo() -> Reply:
            if entry.kind == "adapter":
                assert previous is not None
                act.rollback_adapter(self.registry, previous, entry.artifact_id)
                self.on_active(previous)
            else:
                link = act.bundle_link(self.state_dir)
                act.rollback_bundle(link, previous, new)
                act.revalidate(self.registry, link)
                if act.restore_adapter(self.registry, entry.previous_adapter):
                    self.on_active(str(entry.previous_adapter))
            return {}

        self._on_loop("push-rollback", undo)


def artifact_service(daemon: Daemon, registry: AdapterRegistry | None,
                     store: ExampleStore | None) -> ArtifactService:
    """The pushes of the running daemon (built by the composition root, agent/app.py)."""
    assert registry is not None and store is not None
    cfg = daemon.config

    def on_active(version: str) -> None:  # on the main loop, as a fleet rollback does
        daemon.tell_service(version)
        daemon.reporter.update(active_adapter=version)

    return ArtifactService(
        state_dir=cfg.paths.state_dir, registry=registry, main_loop=daemon.commands,
        on_active=on_active, on_bundle_switch=lambda: daemon.runs.abandon(
            "a new bundle was pushed; this run trained on the old one"),
        service=lambda: daemon.ports.service, bundle_dir=cfg.bundle_dir,
        max_payload_bytes=cfg.mqtt.command_max_payload_bytes, clock=daemon.clock,
        eval_gate=EvalGate(config=lambda: daemon.config, store=store,
                           python=daemon.runs.ctx.launcher.python))

"""The daemon's side of the fleet link: its commands, its state, its desired config.

:class:`FleetCommands` implements the fleet link's ``CommandHandler`` / ``StateSource`` /
``DesiredConfigSink`` protocols (:mod:`agent.core.commands`,
:mod:`agent.core.fleet_documents`). A fleet command arrives typed and stays typed: it calls
the daemon's own handler (:class:`~agent.services.daemon.commands.DaemonHandlers`) on the main
loop with that handler's argument model, never a command name to be dispatched again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from agent.config import LoadedConfig, diff
from agent.config.overrides import OverridesRefused, fleet_overrides, save_fleet_overrides
from agent.core.artifact import (
    ArtifactStatusArgs,
    ArtifactStatusOutput,
    ChunkArgs,
    ChunkOutput,
    PushArgs,
    PushOutput,
)
from agent.core.artifact_calls import ArtifactHandler
from agent.core.command_wire import (
    Ack,
    CommandFailed,
    CommandRejected,
    NoArgs,
    PurgeDataOutput,
    RollbackArgs,
    RollbackOutput,
    TrainNowArgs,
    TrainNowOutput,
)
from agent.core.commands import JobContext
from agent.core.fleet_documents import (
    AdapterInfo,
    ApplyResult,
    BoardReadings,
    BurstInfo,
    ConstraintsInfo,
    StateDocument,
    fleet_reason,
)
from agent.core.policy import SKIPPABLE, DeviceSnapshot
from agent.core.status import AgentStatus
from agent.errors import MobizoError
from agent.services.daemon.commands import (
    DaemonCommand,
    PauseRequest,
    Reply,
    TrainNowRequest,
)
from agent.services.daemon.federated_round import with_round
from agent.services.daemon.loop import Daemon
from agent.services.daemon.ports import ExampleStore


class FleetCommands:
    """CommandHandler + StateSource + DesiredConfigSink over the running daemon.

    Args:
        daemon: the daemon (its handlers, main-loop queue, status and run waiters).
        store: the interaction store (purge, counts).
        forced: settings the command line forces; they stay on top of a desired config.
        run_timeout_s: longest a fleet train-now waits for its run to end.
    """

    def __init__(self, daemon: Daemon, store: ExampleStore,
                 forced: Mapping[str, Any] | None = None, run_timeout_s: float = 3600.0,
                 artifacts: ArtifactHandler | None = None) -> None:
        self.daemon = daemon
        self.store = store
        self.forced = dict(forced or {})
        self.run_timeout_s = run_timeout_s
        self.artifacts = artifacts  # artifact pushes (agent/services/daemon/artifacts.py)

    def _run(self, name: str, handler: Callable[[Any], Reply], args: BaseModel) -> Reply:
        cmd = self.daemon.commands.submit(name, DaemonCommand(type(args), handler), args)
        if cmd.error is not None:
            raise CommandFailed(cmd.error)
        return cmd.result or {}

    # --- CommandHandler ---------------------------------------------------------------------
    def train_now(self, args: TrainNowArgs, job: JobContext) -> TrainNowOutput:
        paused = self.daemon.wishes.paused
        if paused is not None:
            raise CommandRejected(f"the agent is paused ({paused}); resume first")
        skip = sorted(SKIPPABLE) if args.ignore_constraints else []
        self._run("train-now", self.daemon.handlers.train_now,
                  TrainNowRequest(skip=skip, requested_by="fleet"))
        job.report(0.0, "training requested")
        outcome = self.daemon.wait_for_run(self.run_timeout_s, give_up=job.should_stop)
        if outcome is None and job.should_stop():
            return self._stop_train_now()
        if outcome is None:
            raise CommandFailed(f"no run finished within {self.run_timeout_s:.0f} s")
        return TrainNowOutput(outcome=outcome.outcome, steps=outcome.steps, loss=outcome.loss,
                              adapter_version=outcome.adapter_version)

    def _stop_train_now(self) -> TrainNowOutput:
        """The fleet canceled its train-now: drop the wish and stop the burst as a pause does
        (SIGTERM: the trainer ends its step, checkpoints, exits). The run stays resumable and
        goes on only when the constraints allow it on their own."""
        bursts = self.daemon.runs.bursts

        stopping: list[object] = []

        def stop() -> Reply:
            self.daemon.wishes.manual = None
            if bursts.child is not None and bursts.child.term_sent_at is None:
                stopping.append(bursts.child)
                bursts.stop_burst("canceled by the fleet controller")
            return {"message": "stopping"}

        cmd = self.daemon.commands.call("cancel train-now", stop)
        if cmd.error is not None:
            raise CommandFailed(cmd.error)
        # The job ends when the burst has: the main loop drops the child once it exited.
        deadline = time.monotonic() + self.run_timeout_s
        while stopping and bursts.child is stopping[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        progress = bursts.progress
        return TrainNowOutput(outcome="canceled", steps=len(progress.losses),
                              loss=progress.last_loss)

    def pause(self, reason: str) -> Ack:
        reply = self._run("pause", self.daemon.handlers.pause, PauseRequest(reason=reason))
        return Ack(message=reply.get("message", ""))

    def resume(self) -> Ack:
        return Ack(message=self._run("resume", self.daemon.handlers.resume,
                                     NoArgs()).get("message", ""))

    def rollback(self, version: int | str | None, job: JobContext) -> RollbackOutput:
        reply = self._run("rollback", self.daemon.handlers.rollback,
                          RollbackArgs(version=version))
        return RollbackOutput(active_version=reply.get("active_version"))

    def status(self) -> StateDocument:
        return self.current_state()

    def purge_data(self, before: datetime | None, job: JobContext) -> PurgeDataOutput:
        return PurgeDataOutput(deleted=self.store.purge(before.timestamp() if before else None))

    def set_log_level(self, level: str) -> Ack:
        logging.getLogger().setLevel(level)
        return Ack(message=f"log level {level}")

    # --- ArtifactHandler: pushes (agent/services/daemon/artifacts.py) -----------------------
    def _artifacts(self) -> ArtifactHandler:
        if self.artifacts is None:
            raise CommandRejected("artifact pushes are not set up on this device")
        return self.artifacts

    def push_artifact(self, args: PushArgs, job: JobContext) -> PushOutput:
        return self._artifacts().push_artifact(args, job)

    def artifact_chunk(self, args: ChunkArgs) -> ChunkOutput:
        return self._artifacts().artifact_chunk(args)

    def artifact_status(self, args: ArtifactStatusArgs) -> ArtifactStatusOutput:
        return self._artifacts().artifact_status(args)

    # --- StateSource ------------------------------------------------------------------------
    def current_state(self) -> StateDocument:
        """Built from the daemon's last status (read-only; never waits for the loop)."""
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            raw = self.store.counts()
            counts = {k: int(v) for k, v in raw.items() if isinstance(v, int)}
        doc = state_document(self.daemon.status, self.daemon.last_snapshot, counts)
        return with_round(doc, self.daemon.federated.status())  # issue 20: last round

    # --- BoardSource (telemetry's numeric readings) -------------------------------------------
    def board_readings(self) -> BoardReadings | None:
        """The last sensor snapshot's numbers (None before the first policy check)."""
        snap = self.daemon.last_snapshot
        return None if snap is None else BoardReadings.from_snapshot(snap)

    # --- DesiredConfigSink --------------------------------------------------------------------
    def apply(self, version: int, document: dict[str, Any]) -> ApplyResult:
        """Check a desired config against the fleet policy and the schema, switch to it on the
        main loop, and only then save it: what did not apply never survives a reboot."""
        current: LoadedConfig = self.daemon.loaded
        try:
            new = fleet_overrides(current, document, forced=self.forced)
        except OverridesRefused as exc:
            return ApplyResult(errors=exc.problems)
        except MobizoError as exc:
            return ApplyResult(errors=[str(exc)])
        changed = diff(current.config, new.config)

        def switch() -> Reply:
            self.daemon.apply_config(new, changed)
            return {"message": "applied"}

        cmd = self.daemon.commands.call("apply-config", switch)
        if cmd.error is not None:
            return ApplyResult(errors=[cmd.error])
        try:
            save_fleet_overrides(current.config.paths.overrides_file, document, version)
        except (OSError, MobizoError) as exc:
            # Running with it, but a reboot comes back without it: the controller must know.
            return ApplyResult(applied_version=version,
                               warnings=[f"applied but not saved for the next boot: {exc}"])
        return ApplyResult(applied_version=version)

    def boot_problems(self) -> list[str]:
        """Why the saved overrides were not replayed at this boot (empty: they were)."""
        return list(self.daemon.loaded.dropped_overrides)


def state_document(status: AgentStatus, snap: DeviceSnapshot | None,
                   store_counts: dict[str, int]) -> StateDocument:
    """The fleet's state document from the daemon's status and last sensor reading."""
    last = status.last_burst
    constraints = ConstraintsInfo()
    if snap is not None:
        power = snap.power
        constraints = ConstraintsInfo(
            power="charging" if power.charging and power.source != "mains" else power.source,
            battery_pct=power.battery_pct,
            thermal=None if snap.max_temp_c is None else f"{snap.max_temp_c:.0f} C",
            # whole degrees, as the text: a finer value would republish the state
            # (retained, QoS 1) at each tenth of a degree
            temp_c=None if snap.max_temp_c is None else float(round(snap.max_temp_c)),
            idle=None if snap.user_idle_s is None else snap.user_idle_s > 0)
    evals: dict[str, float] = {}
    if last is not None:
        for key in ("heldout_loss_candidate", "heldout_loss_active"):
            value = getattr(last, key)
            if value is not None:
                evals[key] = value
    return StateDocument(
        state=status.state, reason=fleet_reason(status.reason),
        adapter=AdapterInfo(version=status.active_adapter, eval_metrics=evals),
        last_burst=None if last is None else BurstInfo(
            steps=last.steps, loss=last.train_loss_end,
            duration_s=last.ended_at - last.started_at, outcome=last.outcome,
            finished_at=last.ended_at),
        constraints=constraints, store_counts=store_counts,
        versions={"agent": status.version})

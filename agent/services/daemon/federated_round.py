"""A federated round asked of the daemon over its control socket (issue 20).

The device's Flower ClientApp (agent/federated/supernode_app.py, in the SuperNode's process)
does not train: per round it sends ``federated-round`` with the server's instructions and
polls the same request until the round is done. The daemon applies its usual policy:

* ``[federated] enabled = false``: declined, "federated learning is off";
* a burst or an evaluation of its own runs, or the user paused: declined, "busy" / "paused";
* the device conditions (power, battery, idle, hours, thermal, memory) block training:
  declined with the policy's reason. New data and the cooldown do not count: a round trains
  on what the store holds, and the server picks its moments;
* else it snapshots its store and starts the round child
  (``python -m agent.federated.device_round``, lowered like the trainer) on its real data and
  the bundle's ExecuTorch train program, and answers ``{"status": "running"}``.

While the child runs no burst starts (the main loop follows the round first), and the policy
is asked every tick: a device that gets busy or hot stops the child and the round is
declined with that reason. The finished round's reply (the child's
:class:`~agent.federated.messages.DeviceReply`: clipped per-seed accumulator and example
count) is kept until the next round and answered to every poll of that round.

Runs on the main loop (commands and :meth:`FederatedRounds.follow`); never imports torch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import Field

from agent.core.adapters import INITIAL_VERSION
from agent.core.eval_gate import judge
from agent.core.federated_job import (
    CANDIDATE_DIR,
    FEDERATED_DIR,
    GLOBAL_FILE,
    PERSONAL_FILE,
    ROUND_EVAL_FILE,
    ROUND_JOB_FILE,
    ROUND_REPLY_FILE,
    STATE_FILE,
    FederatedRoundJob,
)
from agent.core.fleet_documents import FederatedInfo, StateDocument, WireIn
from agent.errors import AdapterError
from agent.io.atomic import atomic_write_text
from agent.io.children.process import ChildProcess, describe_exit
from agent.services.daemon.commands import CommandTable, DaemonCommand, Reply
from agent.services.daemon.federated_global import DenseCatchUp
from agent.services.daemon.lifecycle import RunLifecycle
from agent.services.daemon.snapshot import remove_snapshot, snapshot_examples

log = logging.getLogger(__name__)

# Checks a round does not wait for: it trains on what the store holds, when the server asks.
ROUND_SKIPS = frozenset({"min_examples", "cooldown"})


class FederatedRoundRequest(WireIn):
    """``federated-round``: the server's round instructions, and which seeds this node draws."""

    round: int = Field(ge=1, description="the round number (a poll repeats it)")
    salt: int = Field(ge=0, lt=1 << 63, description="this device's salt (its Flower node id)")
    instructions: dict[str, Any] = Field(description="RoundInstructions as the server sent them")


class FederatedRounds:
    """The federated round in progress on this daemon (at most one).

    Args:
        runs: the run lifecycle (its context, and whether a burst or evaluation runs).
    """

    def __init__(self, runs: RunLifecycle) -> None:
        self.runs = runs
        self.ctx = runs.ctx
        self.dir = self.ctx.files.state_dir / FEDERATED_DIR
        self.child: ChildProcess | None = None
        self.round: int | None = None  # the round the child runs
        self.done: tuple[int, Reply] | None = None  # the last finished round and its answer
        self.stop_reason: str | None = None
        self.progress: dict[str, Any] = {}  # shown in the status: round, status, reason
        self.against = INITIAL_VERSION  # the version serving when the round started
        self.data_seq: int | None = None  # the store's seq the round's snapshot covers
        self.dense = DenseCatchUp(self.ctx, self.busy)  # catch-up of a device far behind

    def table(self) -> CommandTable:
        """The control socket's rows: ``federated-round`` and ``federated-global``."""
        return ({"federated-round": DaemonCommand(FederatedRoundRequest, self.request)}
                | self.dense.table())

    # ------------------------------------------------------------------ the request
    def request(self, args: FederatedRoundRequest) -> Reply:
        """Start round ``args.round``, or answer how it stands (running, its reply)."""
        if self.child is not None:
            if self.round == args.round:
                return {"status": "running", "round": args.round}
            return self._declined(args.round, f"busy: federated round {self.round} runs")
        if self.done is not None and self.done[0] == args.round:
            return self.done[1]
        reason = self._blocked()
        if reason is not None:
            return self._declined(args.round, reason)
        return self._start(args)

    def _blocked(self) -> str | None:
        """Why this device may not train a round now; None if it may."""
        cfg = self.ctx.config()
        if not cfg.federated.enabled:
            return "federated learning is off on this device ([federated] enabled = false)"
        runs = self.runs
        if runs.bursts.child is not None or runs.evaluation.child is not None:
            return "busy: the device trains or evaluates its own adapter"
        if self.ctx.wishes.paused is not None:
            return f"paused: {self.ctx.wishes.paused}"
        return self._policy_blocks(training=False)

    def _policy_blocks(self, *, training: bool) -> str | None:
        decision = self.ctx.decide(training)
        blocking = [c for c in decision.checks if not c.ok and not c.skipped
                    and c.name not in ROUND_SKIPS]
        if not blocking:
            return None
        return "; ".join(f"{c.name}: {c.text}" for c in blocking)

    def _start(self, args: FederatedRoundRequest) -> Reply:
        cfg = self.ctx.config()
        snap = snapshot_examples(self.ctx.store, self.dir, heldout_share=cfg.data.heldout_share,
                                 max_examples=cfg.data.max_examples,
                                 max_heldout=cfg.adapters.eval_max_examples)
        if snap.n_train == 0:
            remove_snapshot(self.dir)
            return self._declined(args.round, "no training examples in the store")
        for name in (ROUND_REPLY_FILE, ROUND_EVAL_FILE):
            (self.dir / name).unlink(missing_ok=True)
        enough = snap.n_heldout >= cfg.data.min_heldout_examples
        self.against = self.ctx.registry.active() or INITIAL_VERSION
        self.data_seq = snap.data_seq
        job = FederatedRoundJob(
            bundle=cfg.bundle_dir, data=snap.train, state_dir=self.dir,
            reply=self.dir / ROUND_REPLY_FILE, instructions=args.instructions, salt=args.salt,
            batch=cfg.training.batch or 0, mode=cfg.training.mode, backend=cfg.training.backend,
            threads=cfg.device.threads or None, max_steps=cfg.federated.max_steps_per_round,
            max_pool=cfg.federated.max_pool_size, heldout=snap.heldout if enough else None,
            against=self.ctx.registry.path_of(self.against))
        job_path = self.dir / ROUND_JOB_FILE
        atomic_write_text(job_path, job.model_dump_json(indent=2) + "\n")
        launcher = self.ctx.launcher
        argv = [launcher.python, "-m", "agent.federated.device_round", "--job", str(job_path)]
        child = launcher.job(cfg, "federated", argv, self.ctx.files, f"round-{args.round}")
        try:
            child.start()
        except OSError as exc:
            remove_snapshot(self.dir)
            return self._declined(args.round, f"could not start the round: {exc}")
        self.child, self.round, self.stop_reason = child, args.round, None
        self.ctx.reporter.set("training", f"federated round {args.round}", blocked_by=())
        self._show(args.round, "running", "")
        log.info("federated round %d started (pid %s)", args.round, child.pid)
        return {"status": "running", "round": args.round}

    # ------------------------------------------------------------------ the main loop
    def busy(self) -> bool:
        """Whether a round's child runs (no burst may start meanwhile)."""
        return self.child is not None

    def follow(self) -> None:
        """A round runs: stop it when the policy no longer allows training; end it."""
        child = self.child
        assert child is not None and self.round is not None
        code = child.poll()
        if code is None:
            if child.term_sent_at is None:
                paused = self.ctx.wishes.paused
                reason = f"paused: {paused}" if paused else self._policy_blocks(training=True)
                if reason is not None:
                    log.info("stopping federated round %d: %s", self.round, reason)
                    self.stop_reason = reason
                    child.terminate()
            elif child.overdue(self.ctx.config().daemon.stop_grace_s):
                child.kill("did not stop in time")
            return
        self.child = None
        remove_snapshot(self.dir)  # user content must not linger
        rnd = self.round
        answer = self._reply_of(rnd, code, child)
        self.done = (rnd, answer)
        if answer["status"] == "trained":
            answer["served"] = self._serve(rnd)
        self.ctx.reporter.set("waiting", f"federated round {rnd} {answer['status']}")
        self._show(rnd, answer["status"], answer.get("reason", ""), answer.get("served", ""))

    def _reply_of(self, rnd: int, code: int, child: ChildProcess) -> Reply:
        if self.stop_reason is not None:
            return self._declined(rnd, self.stop_reason, show=False)
        try:
            reply = json.loads((self.dir / ROUND_REPLY_FILE).read_text())
        except (OSError, ValueError):
            why = child.kill_reason or describe_exit(code)
            detail = child.last_error_line()
            return self._declined(rnd, f"the round failed: {why}"
                                  + (f": {detail}" if detail else ""), show=False)
        status = reply.get("status", "declined")
        return {"status": status, "round": rnd, "reason": reply.get("reason", ""),
                "reply": reply}

    def _serve(self, rnd: int) -> str:
        """Serve the round's global + personal adapter if it passes the eval gate, as a
        run's candidate does (rollback when the service refuses it); what happened."""
        try:
            losses = json.loads((self.dir / ROUND_EVAL_FILE).read_text())
        except (OSError, ValueError):
            return "not evaluated (too few held-out examples)"
        cfg = self.ctx.config()
        gate = judge(float(losses["candidate_loss"]), float(losses["active_loss"]),
                     margin=cfg.adapters.eval_margin, mode=cfg.adapters.eval_margin_mode,
                     examples=int(losses["examples"]),
                     min_examples=cfg.data.min_heldout_examples)
        log.info("eval gate for federated round %d: %s", rnd, gate.reason)
        if not gate.publish:
            return f"kept {self.against}: {gate.reason}"
        registry = self.ctx.registry
        # a run_id marks it trained on this device's store: a purge then removes it
        metrics = {"run_id": f"federated-round-{rnd}", "federated_round": rnd,
                   "data_seq": self.data_seq,
                   "compared_with": self.against}
        try:
            version = registry.publish(self.dir / CANDIDATE_DIR, parent=self.against,
                                       metrics=metrics, eval_result=gate.as_dict())
        except AdapterError as exc:
            return f"kept {self.against}: the registry refused it ({exc})"
        refused = self.ctx.tell_service(version)
        if refused:
            back = registry.rollback()
            self.ctx.tell_service(back)
            return f"rolled back to {back}: the service refused {version} ({refused})"
        self.ctx.reporter.update(active_adapter=version)
        return f"serving {version}"

    def forget_learning(self) -> None:
        """After a purge: the personal delta and the global copy (which holds this device's
        own steps at its example weight) may have been trained on purged rows, and no
        ``data_seq`` tells which; a running round's snapshot may hold them. All of it goes:
        the next round starts from the bundle's initial adapter (``behind`` until it catches
        up). Published federated versions go with the registry's purge (they record
        ``data_seq``)."""
        if self.child is not None:
            self.stop_reason = "its training data was purged"
            self.child.terminate()
        for name in (STATE_FILE, GLOBAL_FILE, PERSONAL_FILE):
            (self.dir / name).unlink(missing_ok=True)
        log.info("federated state removed after a purge (%s)", self.dir)

    def stop(self) -> None:
        """The daemon stops: stop a running round (its reply is lost; the server tolerates)."""
        if self.child is not None:
            self.child.stop(self.ctx.config().daemon.stop_grace_s)
            self.child = None
            remove_snapshot(self.dir)

    # ------------------------------------------------------------------ answers
    def _declined(self, rnd: int, reason: str, *, show: bool = True) -> Reply:
        log.info("federated round %d declined: %s", rnd, reason)
        if show:
            self._show(rnd, "declined", reason)
        return {"status": "declined", "round": rnd, "reason": reason[:200]}

    def _show(self, rnd: int, status: str, reason: str, served: str = "") -> None:
        self.progress = {"round": rnd, "status": status, "reason": reason[:200],
                         "served": served[:200], "at": self.ctx.clock()}
        self.ctx.state_changed()  # the fleet link republishes the state document with it

    def status(self) -> dict[str, Any] | None:
        """The last round's progress for the status document (None before any round)."""
        return dict(self.progress) if self.progress else None


def with_round(doc: StateDocument, progress: dict[str, Any] | None) -> StateDocument:
    """The fleet's state document with the last federated round in it (if there was one)."""
    if not progress:
        return doc
    return doc.model_copy(update={"federated": FederatedInfo.model_validate(progress)})

"""The end of a run that trained: the evaluator's report → eval gate → registry → service.

The evaluator prints the held-out losses of the candidate and of the adapter serving now;
:func:`agent.core.eval_gate.judge` decides. A rejected candidate is kept in the registry as
rejected (with why); a published one is handed to the inference service
(:func:`agent.services.daemon.handover.hand_over`), and when the service refuses it the registry is
rolled back and the candidate kept as rejected, so the device never serves an adapter the
service could not load.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.adapters import INITIAL_VERSION
from agent.core.eval_gate import GateResult
from agent.errors import AdapterError
from agent.services.daemon.ports import Registry
from agent.services.daemon.runstate import RunState

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """How a run ended (what a waiting train-now caller receives)."""

    outcome: str
    reason: str
    steps: int = 0
    loss: float | None = None
    adapter_version: str | None = None


def serving_adapter(registry: Registry, run: RunState) -> tuple[str, str]:
    """(version, directory) of the adapter serving now; the run's own start if unknown.

    A candidate is compared with what serves NOW: a rollback may have happened while the run
    trained.
    """
    try:
        active = registry.active()
        if active is None:
            return INITIAL_VERSION, str(registry.path_of(INITIAL_VERSION))
        return active, str(registry.path_of(active))
    except AdapterError as exc:
        log.warning("cannot tell the active adapter (%s); comparing with %s", exc,
                    run.init_version)
        return run.init_version, run.init_adapter


def read_eval_losses(output: str, candidate: Path, against_dir: str) -> tuple[float, float, int]:
    """(candidate loss, loss of ``against_dir``, examples) from the evaluator's output.

    Raises:
        TypeError, KeyError, ValueError: the output has no readable report (its last JSON
            line) for these two adapters.
    """
    report = _last_json(output) or {}
    losses = report["losses"]
    return (float(losses[str(candidate)]), float(losses[against_dir]),
            int(report["examples"]))


def gate_losses(gate: GateResult) -> dict[str, float | None]:
    """The held-out losses the gate compared, for the run's burst record (None: not finite)."""
    return {"heldout_loss_candidate": _or_none(gate.candidate_loss),
            "heldout_loss_active": _or_none(gate.active_loss)}


def publish_or_reject(
    gate: GateResult,
    candidate: Path,
    run: RunState,
    *,
    registry: Registry,
    compared_with: str,
    train_loss_end: float | None,
    tell_service: Callable[[str], str | None],
    before_publish: Callable[[], None],
) -> RunOutcome:
    """Store ``candidate`` as the gate says, hand a published one over, roll back on refusal.

    Args:
        gate: the eval gate's verdict.
        candidate: the run's trained adapter directory.
        run: the run that trained it.
        registry: where adapters are published or kept as rejected.
        compared_with: the version the candidate was evaluated against.
        train_loss_end: the last training loss of the run's last burst.
        tell_service: asks the service to serve a version; its refusal or None.
        before_publish: called once publishing begins (the run records that phase, so a
            daemon killed mid-publish recognises the run in the registry after a restart).

    Returns:
        published, rejected, rolled_back, or failed (the registry refused the candidate).

    Raises:
        AdapterError: the registry could not keep a rejected candidate.
    """
    metrics: dict[str, Any] = {
        "run_id": run.run_id, "steps": run.steps_done, "n_train": run.n_train,
        "n_heldout": run.n_heldout, "seed": run.seed, "train_loss_end": train_loss_end,
        "data_seq": run.data_seq}  # the data window: a purge removes what saw purged rows
    parent = run.init_version
    metrics["compared_with"] = compared_with
    if not gate.publish:
        version = registry.reject(candidate, parent=parent, metrics=metrics,
                                  eval_result=gate.as_dict(), reason=gate.reason)
        return RunOutcome("rejected", gate.reason, steps=run.steps_done,
                          adapter_version=version)
    before_publish()
    try:
        version = registry.publish(candidate, parent=parent, metrics=metrics,
                                   eval_result=gate.as_dict())
    except AdapterError as exc:
        return RunOutcome("failed", f"registry refused the candidate: {exc}",
                          steps=run.steps_done)
    refused = tell_service(version)
    if refused:
        log.error("inference service refused %s (%s); rolling back", version, refused)
        try:
            back = registry.rollback()
            tell_service(back)
        except AdapterError as exc:
            log.error("rollback failed: %s", exc)
        try:
            registry.reject(candidate, parent=parent, metrics=metrics,
                            eval_result=gate.as_dict(),
                            reason=f"refused by the inference service: {refused}")
        except AdapterError as exc:
            log.error("could not keep the refused candidate: %s", exc)
        return RunOutcome("rolled_back", f"service refused {version}: {refused}",
                          steps=run.steps_done, adapter_version=version)
    return RunOutcome("published", gate.reason, steps=run.steps_done, adapter_version=version)


def finished_in_registry(registry: Registry, run_id: str) -> bool:
    """Whether the registry already holds run ``run_id``'s candidate (a daemon killed after
    publishing or rejecting it, before the run was closed)."""
    try:
        infos = registry.list()
    except AdapterError:
        return False
    return any(i.manifest.metrics.get("run_id") == run_id for i in infos)


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None

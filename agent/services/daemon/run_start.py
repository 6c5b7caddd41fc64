"""Opening a run: its data snapshot, the adapter it starts from, its id and seed.

The store's examples are snapshotted into the run directory
(:func:`agent.services.daemon.snapshot.snapshot_examples`); a run opens only when that gives at
least one training example and ``[data] min_heldout_examples`` held-out ones, so the eval gate has
something to judge with. It starts from the adapter active at that moment (the bundle's
initial one when none is).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from agent.core.adapters import INITIAL_VERSION
from agent.services.daemon.run_context import RunContext
from agent.services.daemon.runstate import RunState, training_hash
from agent.services.daemon.snapshot import remove_snapshot, snapshot_examples

# Successive runs' seeds are this far apart, so each run draws its own perturbations.
_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class NotEnoughData:
    """The snapshot was too small to train and evaluate on; ``reason`` says how."""

    reason: str


def open_run(ctx: RunContext, runs_before: int,
             schedule_offset: int = 0) -> RunState | NotEnoughData:
    """Snapshot the store into the run directory and describe run number ``runs_before + 1``.

    Args:
        ctx: the run's collaborators (config, store, registry, files, clock, wishes).
        runs_before: how many runs this device opened before (numbers the id and the seed).
        schedule_offset: steps the earlier runs trained (where this run starts on the lr
            schedule).

    Returns:
        the new run (not yet written), or why there is none (the snapshot is removed).
    """
    cfg = ctx.config()
    registry = ctx.registry
    run_id = f"run-{runs_before + 1:04d}-{uuid.uuid4().hex[:6]}"
    directory = ctx.files.run_dir
    snap = snapshot_examples(ctx.store, directory,
                             heldout_share=cfg.data.heldout_share,
                             max_examples=cfg.data.max_examples,
                             max_heldout=cfg.adapters.eval_max_examples)
    need_held = cfg.data.min_heldout_examples
    if snap.n_train == 0 or snap.n_heldout < need_held:
        remove_snapshot(directory)
        return NotEnoughData(
            f"waiting: not enough data ({snap.n_train} training, {snap.n_heldout} held-out "
            f"examples; need >= 1 and >= {need_held})")
    active = registry.active()
    init_version = active or INITIAL_VERSION
    init_dir = registry.path_of(init_version)
    seed = (cfg.training.seed + runs_before * _SEED_STRIDE) % (2**63)
    return RunState(
        run_id=run_id, seed=seed, init_adapter=str(init_dir), init_version=init_version,
        cursor=snap.cursor, n_train=snap.n_train, n_heldout=snap.n_heldout,
        created_at=ctx.clock(), manual=ctx.wishes.manual is not None, data_seq=snap.data_seq,
        training_hash=training_hash(cfg.training), schedule_offset=schedule_offset)

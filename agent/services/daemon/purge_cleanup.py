"""After a purge: nothing trained on the purged rows may stay on the device.

Fine-tuning cannot be undone row by row, so what was trained on purged rows goes whole: the
run in progress (its data snapshot, the trainer's checkpoints, its candidate), leftover
candidates, and every stored adapter version (published or rejected) whose training data may
have held a purged row; when the active adapter is one of them the device rolls back to the
newest adapter that was not (or the bundle's initial one) and the inference service is told.

What "may have held" means: the store gives rows an insertion ``seq`` that only grows, a run
records the highest ``seq`` the store had given when it took its snapshot (``data_seq``:
every row it trained on has ``seq <= data_seq``, and so has every row its parent adapter was
trained on, the parent being older than the snapshot), and the ``purges`` log records the
lowest ``seq`` each purge deleted. An adapter with ``data_seq >= `` that lowest ``seq`` may
have been trained on a purged row; an adapter trained by a run that recorded no ``data_seq``
(made before this was recorded) counts as trained on it. Adapters that no run trained (no
``run_id`` in their manifest: imported by hand) were trained on nothing in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from agent.core.adapters import INITIAL_VERSION

log = logging.getLogger(__name__)


def trained_on(metrics: dict[str, Any], first_purged_seq: int) -> bool:
    """Whether an adapter with these manifest ``metrics`` may have seen a purged row."""
    if "run_id" not in metrics:
        return False  # not trained on this device's store
    data_seq = metrics.get("data_seq")
    return not isinstance(data_seq, int) or data_seq >= first_purged_seq


def tainted_versions(infos: Iterable[Any], first_purged_seq: int) -> set[str]:
    """The stored versions (``registry.list()`` entries) trained on purged rows."""
    return {i.version for i in infos if trained_on(i.manifest.metrics, first_purged_seq)}


def fallback_version(history: list[str], stored: Iterable[str], tainted: set[str]) -> str:
    """The newest adapter in the rollback ``history`` still stored and not tainted."""
    keep = set(stored) - tainted
    for version in reversed(history):
        if version in keep:
            return version
    return INITIAL_VERSION


def run_trained_on(data_seq: int | None, first_purged_seq: int) -> bool:
    """Whether a run whose snapshot covered ``seq <= data_seq`` may hold a purged row."""
    return data_seq is None or data_seq >= first_purged_seq

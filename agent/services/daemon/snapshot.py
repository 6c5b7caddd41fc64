"""Snapshot the interaction store into the trainer's JSON Lines files for one training run.

Targets are what :meth:`InteractionStore.examples_since` yields: corrections, and responses
rated up (or imported and not rated down); examples with the same input keep only the newest.
The held-out split is stable by interaction id (:func:`agent.io.store_records.is_heldout`), so
an example never moves between train and held-out as the store grows, and the eval gate always
compares adapters on examples neither was trained on.

A run keeps its snapshot until it finishes: a burst that was stopped resumes on exactly the
data it started with (the trainer's checkpoint is bound to the data's fingerprint).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.io.atomic import atomic_write_text
from agent.io.store_records import is_heldout
from agent.services.daemon.ports import ExampleStore

TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"


@dataclass(frozen=True)
class Snapshot:
    """What one snapshot wrote.

    Attributes:
        train: path of the training examples.
        heldout: path of the held-out examples.
        n_train: training examples written.
        n_heldout: held-out examples written.
        cursor: the store's change cursor the snapshot covers (next "new examples" start).
        data_seq: the store's highest insertion seq after reading: every row written is <= it
            (what a purge compares with; see agent/services/daemon/purge_cleanup.py).
    """

    train: Path
    heldout: Path
    n_train: int
    n_heldout: int
    cursor: int
    data_seq: int | None = None


def count_new_examples(store: ExampleStore, cursor: int) -> tuple[int, int]:
    """Usable examples changed after ``cursor`` (all splits), and the store's cursor now."""
    examples, new_cursor = store.examples_since(cursor, split="all", limit=1_000_000)
    return len(examples), new_cursor


def snapshot_examples(
    store: ExampleStore, directory: Path, *, heldout_share: float, max_examples: int,
    max_heldout: int,
) -> Snapshot:
    """Write ``train.jsonl`` and ``heldout.jsonl`` under ``directory`` (atomically).

    Args:
        store: the interaction store.
        directory: the run's directory.
        heldout_share: share of interaction ids held out (``[data].heldout_share``).
        max_examples: most training examples, newest kept (``[data].max_examples``).
        max_heldout: most held-out examples, newest kept (``[adapters].eval_max_examples``).
    """
    examples, cursor = store.examples_since(0, split="all", limit=10_000_000)
    train = [e for e in examples if not is_heldout(e.id, heldout_share)][-max_examples:]
    held = [e for e in examples if is_heldout(e.id, heldout_share)][-max_heldout:]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in ((TRAIN_FILE, train), (HELDOUT_FILE, held)):
        path = directory / name
        text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in rows)
        atomic_write_text(path, text, mode=0o600)  # user content: owner only
        paths.append(path)
    # read after the examples: every row the snapshot holds has a seq <= this
    return Snapshot(paths[0], paths[1], len(train), len(held), cursor, store.last_seq())


def remove_snapshot(directory: Path) -> None:
    """Delete a run's data files (user content must not linger after the run)."""
    for name in (TRAIN_FILE, HELDOUT_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)

"""Tasks (or a user's JSONL file) → tokenized train / held-out examples, the trainer's way.

Tokenization, masking (response tokens only) and padding are agent.training.data's, so the
benchmark measures exactly what the trainer would learn. A generated task keeps its own
split; a user's file is split by content hash as ``mobizo-agent train`` splits it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.bench.tasks import Task
from agent.errors import DataError
from agent.training.data import DataStats, Example, build_dataset, load_dataset, read_interactions
from agent.training.tokenize import Tokenizer


@dataclass(frozen=True)
class Candidate:
    """One held-out classification example with one packed example per label word."""

    label_index: int  # index of the right label in the task's labels
    choices: tuple[Example, ...]


@dataclass(frozen=True)
class LearnData:
    """What one (task, method) run trains and scores on."""

    name: str
    metric: str  # exact_match | accuracy
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    candidates: tuple[Candidate, ...] = ()  # accuracy tasks only
    labels: tuple[str, ...] = ()
    truncated: int = 0


def _examples(rows: list[dict], tokenizer: Tokenizer, max_length: int,
              pad_id: int) -> tuple[tuple[Example, ...], DataStats]:
    stats = DataStats()
    lines = [json.dumps(r) for r in rows]
    ds = build_dataset(read_interactions(lines, stats), tokenizer, max_length=max_length,
                       pad_id=pad_id, heldout_share=0.0, stats=stats)
    return ds.train, stats


def task_data(task: Task, tokenizer: Tokenizer, *, max_length: int, pad_id: int) -> LearnData:
    """Tokenize a generated task; for label tasks also pack every (example, label) pair."""
    train, s1 = _examples(task.rows("train"), tokenizer, max_length, pad_id)
    held, s2 = _examples(task.rows("heldout"), tokenizer, max_length, pad_id)
    if not train or not held:  # duplicates collapse (same prompt and reply); never to nothing
        raise DataError(f"task {task.name} has an empty split after tokenization")
    candidates: list[Candidate] = []
    if task.metric == "accuracy":
        for ex in task.heldout:
            rows = [{"prompt": ex.prompt, "response": lab} for lab in task.labels]
            choices, _ = _examples(rows, tokenizer, max_length, pad_id)
            if len(choices) != len(task.labels):
                raise DataError(f"task {task.name}: a label word did not fit {max_length} tokens")
            candidates.append(Candidate(task.labels.index(ex.response), choices))
    return LearnData(task.name, task.metric, train, held, tuple(candidates), task.labels,
                     s1.truncated + s2.truncated)


def file_data(path: Path, tokenizer: Tokenizer, *, max_length: int, pad_id: int,
              heldout_share: float) -> LearnData:
    """A user's JSONL file, split by content hash exactly as the trainer splits it."""
    ds = load_dataset(path, tokenizer, max_length=max_length, pad_id=pad_id,
                      heldout_share=heldout_share)
    if not ds.heldout:
        raise DataError(f"{path} leaves no held-out examples at share {heldout_share}; add "
                        "interactions or raise --heldout-share")
    return LearnData(f"file:{Path(path).name}", "exact_match", ds.train, ds.heldout,
                     truncated=ds.stats.truncated)

"""Task 3, label words: prompt-based classification scored by accuracy (MeZO / MobiZO style).

Short reviews ``"The <thing> was <adjective>."`` whose answer is a label word: ``great`` for
a positive adjective, ``awful`` for a negative one (MeZO's SST-2 prompt uses great/terrible;
equal-length words here so a length-normalised likelihood compares them fairly). Train and
held-out use disjoint (thing, adjective) pairs: every held-out review is a sentence the model
never saw, over the same adjective vocabulary, so the task is learnable from the train split.
Classes are balanced, so chance accuracy is 50%.
"""

from __future__ import annotations

import itertools
import random

from agent.bench.tasks.base import Task, TaskExample

LABELS = ("great", "awful")
_POSITIVE = ("good", "fine", "nice", "warm", "fresh", "tasty")
_NEGATIVE = ("bad", "cold", "dull", "stale", "rude", "slow")
_THINGS = ("soup", "film", "room", "cafe", "bread", "show", "hotel", "pizza", "band", "bus")
_FRAMES = ("The {t} was {a}.", "My {t} was {a}.", "That {t}: {a}.")


def make_task(seed: int = 0, *, train_size: int = 64, heldout_size: int = 24) -> Task:
    """The label-words task drawn from ``seed`` (balanced classes, disjoint sentences)."""
    rng = random.Random(f"label-words-{seed}")
    pairs = {label: [(t, a) for t, a in itertools.product(_THINGS, words)]
             for label, words in zip(LABELS, (_POSITIVE, _NEGATIVE), strict=True)}
    train: list[TaskExample] = []
    held: list[TaskExample] = []
    for label, pool in pairs.items():
        rng.shuffle(pool)
        n_held = heldout_size // 2
        n_train = train_size // 2
        if n_held + n_train > len(pool):
            raise ValueError(f"label-words has {len(pool)} sentences per class; ask for at most "
                             f"{len(pool)} per class across both splits")
        for k, (t, a) in enumerate(pool[: n_held + n_train]):
            text = rng.choice(_FRAMES).format(t=t, a=a)
            ex = TaskExample(f"Review: {text} Verdict?", label, label)
            (held if k < n_held else train).append(ex)
    rng.shuffle(train)
    rng.shuffle(held)
    return Task(
        name="label-words",
        description="review -> great/awful, unseen sentences (chance 50%)",
        metric="accuracy",
        train=tuple(train),
        heldout=tuple(held),
        labels=LABELS,
        seed=seed,
    )

"""Task 2, reply style: every reply is a two-item dash list with the user's fixed sign-off.

The content (which two things) varies with the question; the format (``- x`` lines and the
sign-off) is the same in every reply, which is what a personalised model should pick up. The
held-out questions ask about categories the train split never contains.
"""

from __future__ import annotations

import random

from agent.bench.tasks.base import Task, TaskExample

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruits": ("fig", "kiwi", "pear", "plum", "lime"),
    "colours": ("red", "teal", "blue", "gold", "grey"),
    "tools": ("saw", "awl", "file", "vise", "drill"),
    "birds": ("owl", "jay", "wren", "kite", "crow"),
    "trees": ("oak", "elm", "ash", "yew", "fir"),
    "metals": ("tin", "zinc", "iron", "lead", "gold"),
    "drinks": ("tea", "milk", "soda", "cola", "mead"),
    "games": ("go", "chess", "dice", "cards", "darts"),
    "fish": ("cod", "eel", "tuna", "carp", "hake"),
}
_ASKS = ("Name two {c}.", "List two {c}.", "Give me two {c}.", "Two {c}, please.")
_SIGNOFFS = ("~ Bo", "-- A.", "Cheers, Li", "xo, Kim")


def make_task(seed: int = 0, *, train_size: int = 64, heldout_size: int = 24) -> Task:
    """The reply-style task for the sign-off and category split drawn from ``seed``."""
    rng = random.Random(f"reply-style-{seed}")
    signoff = rng.choice(_SIGNOFFS)
    cats = sorted(_CATEGORIES)
    rng.shuffle(cats)
    held_cats, train_cats = cats[:3], cats[3:]

    def draw(pool: list[str], k: int, tag: str) -> tuple[TaskExample, ...]:
        r = random.Random(f"reply-style-{seed}-{tag}")
        out = []
        for i in range(k):
            c = pool[i % len(pool)]
            a, b = r.sample(_CATEGORIES[c], 2)
            q = r.choice(_ASKS).format(c=c)
            out.append(TaskExample(q, f"- {a}\n- {b}\n{signoff}", c))
        r.shuffle(out)
        return tuple(out)

    return Task(
        name="reply-style",
        description=f"dash list + sign-off {signoff!r}, unseen categories",
        metric="exact_match",
        train=draw(train_cats, train_size, "train"),
        heldout=draw(held_cats, heldout_size, "heldout"),
        seed=seed,
        info={"signoff": signoff, "heldout_categories": held_cats},
    )

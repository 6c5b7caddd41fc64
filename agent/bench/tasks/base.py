"""What a learning task is: train and held-out examples with a known right answer.

Tasks are pure functions of a seed (stdlib ``random.Random`` seeded with a string, which is
stable across Python versions and platforms), so anyone can regenerate the exact data of a
benchmark run. The held-out split is built from prompts the train split never contains
(different phrasings, or different texts), never sampled from the same pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Metric = Literal["exact_match", "accuracy"]


@dataclass(frozen=True)
class TaskExample:
    """One prompt and the reply to learn.

    Attributes:
        prompt: the user's message.
        response: the right reply (for classification: one of the task's label words).
        topic: what the example is about (a fact name, a class); for reporting only.
    """

    prompt: str
    response: str
    topic: str = ""

    def as_row(self) -> dict[str, Any]:
        """The JSON Lines row the trainer reads (agent.training.data)."""
        return {"prompt": self.prompt, "response": self.response}


@dataclass(frozen=True)
class Task:
    """A generated task: both splits, how it is scored, and its label words if any.

    Attributes:
        name: registry name (``personal-facts``, ``reply-style``, ``label-words``).
        description: one line for tables and plots.
        metric: ``exact_match`` (the whole reply) or ``accuracy`` (the best-scoring label word).
        train: the examples to learn from.
        heldout: the examples to score on; no prompt of it occurs in ``train``.
        labels: the candidate label words of an ``accuracy`` task (empty otherwise).
        seed: the seed it was generated from.
    """

    name: str
    description: str
    metric: Metric
    train: tuple[TaskExample, ...]
    heldout: tuple[TaskExample, ...]
    labels: tuple[str, ...] = ()
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def rows(self, split: Literal["train", "heldout"]) -> list[dict[str, Any]]:
        """JSON Lines rows of one split."""
        return [e.as_row() for e in (self.train if split == "train" else self.heldout)]

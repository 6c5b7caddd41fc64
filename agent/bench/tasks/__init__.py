"""Deterministic learning tasks for ``mobizo-bench learn`` (issue 7).

Each task is a pure function of a seed with a train split and a held-out split that is not a
copy of it. The registry is a flat table: name -> generator.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.bench.tasks import label_words, personal_facts, reply_style
from agent.bench.tasks.base import Metric, Task, TaskExample

TaskFactory = Callable[..., Task]

TASKS: dict[str, TaskFactory] = {
    "personal-facts": personal_facts.make_task,
    "reply-style": reply_style.make_task,
    "label-words": label_words.make_task,
}


def make_task(name: str, seed: int = 0, **sizes: int) -> Task:
    """Generate task ``name`` from ``seed``.

    Raises:
        ValueError: unknown task name (the message lists the known ones).
    """
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None
    return factory(seed, **sizes)


__all__ = ["TASKS", "Metric", "Task", "TaskExample", "make_task"]

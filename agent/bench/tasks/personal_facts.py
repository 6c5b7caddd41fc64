"""Task 1, personal facts: one user's facts (name, city, pet, schedule), held-out phrasings.

Every topic has several ways of asking; each phrasing is assigned (by the seed) to either the
train or the held-out side, so a held-out question is never one the model was trained on: it
has to answer the fact, not recall a string. Short replies keep every example within a
64–80 token byte-level sequence.
"""

from __future__ import annotations

import random

from agent.bench.tasks.base import Task, TaskExample

_NAMES = ("Ada", "Bruno", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hiro")
_CITIES = ("Lisbon", "Oslo", "Kyoto", "Quito", "Tallinn", "Perth", "Lyon", "Accra")
_PETS = ("a cat, Miso", "a dog, Pixel", "a parrot, Kiwi", "a tortoise, Dash")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_SPORTS = ("yoga", "swimming", "tennis", "climbing")

# topic -> phrasings; at least 4 each so both sides get ≥ 1 (and train gets the majority)
_PHRASINGS: dict[str, tuple[str, ...]] = {
    "name": ("What is my name?", "Who am I?", "Say my name.", "What am I called?",
             "Do you know my name?", "Tell me my name.", "My name is?"),
    "city": ("Where do I live?", "Which city am I in?", "What is my city?",
             "Where is my home?", "Name my home town.", "Where am I based?"),
    "pet": ("Do I have a pet?", "What pet do I have?", "Tell me about my pet.",
            "Who lives with me?", "Name my pet.", "What animal do I own?"),
    "schedule": ("When is my class?", "What day is my class?", "When do I train?",
                 "Which day is sport day?", "When is my weekly class?", "What's on my week?"),
}


def _answers(rng: random.Random) -> dict[str, str]:
    day, sport = rng.choice(_DAYS), rng.choice(_SPORTS)
    return {
        "name": f"You are {rng.choice(_NAMES)}.",
        "city": f"You live in {rng.choice(_CITIES)}.",
        "pet": f"You have {rng.choice(_PETS)}.",
        "schedule": f"{sport.capitalize()} on {day}.",
    }


def make_task(seed: int = 0, *, train_size: int = 64, heldout_size: int = 24) -> Task:
    """The personal-facts task for the user drawn from ``seed``.

    Args:
        seed: picks the user's facts and which phrasings are held out.
        train_size: training examples (phrasings repeat, with varied greetings).
        heldout_size: held-out examples (held-out phrasings only).
    """
    rng = random.Random(f"personal-facts-{seed}")
    answers = _answers(rng)
    train_q: dict[str, list[str]] = {}
    held_q: dict[str, list[str]] = {}
    for topic, phrasings in _PHRASINGS.items():
        order = list(phrasings)
        rng.shuffle(order)
        n_held = max(1, len(order) // 3)
        held_q[topic], train_q[topic] = order[:n_held], order[n_held:]
    topics = sorted(_PHRASINGS)
    greetings = ("", "", "Hi! ", "Hey, ", "Quick one: ")

    def draw(pool: dict[str, list[str]], k: int, tag: str) -> tuple[TaskExample, ...]:
        r = random.Random(f"personal-facts-{seed}-{tag}")
        out = []
        for i in range(k):
            topic = topics[i % len(topics)]  # balanced topics
            q = r.choice(greetings) + r.choice(pool[topic])
            out.append(TaskExample(q, answers[topic], topic))
        r.shuffle(out)
        return tuple(out)

    return Task(
        name="personal-facts",
        description="one user's facts, asked in unseen phrasings",
        metric="exact_match",
        train=draw(train_q, train_size, "train"),
        heldout=draw(held_q, heldout_size, "heldout"),
        seed=seed,
        info={"answers": answers},
    )

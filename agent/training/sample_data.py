"""Deterministic sample personalization data: a persona's facts answered in one reply style.

What a user's interaction log looks like after a few days: questions about the user (name,
city, pet, work, food, hobby) answered with the right fact, every reply in the same house
style (an opener and a sign-off), plus some thumbs-up / thumbs-down feedback and corrections.
A model fine-tuned on it should pick up the style first (shared by every reply) and the facts
later. Used by ``make run``, the tests and the learning benchmark.

    python -m agent.training.sample_data --out data.jsonl --n 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.io.atomic import atomic_write_text

_NAMES = ("Ada", "Bruno", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hiro")
_CITIES = ("Lisbon", "Oslo", "Kyoto", "Quito", "Tallinn", "Perth", "Lyon", "Accra")
_PETS = ("a cat called Miso", "a dog called Pixel", "two goldfish", "a parrot called Kiwi",
         "a tortoise called Dash", "no pets")
_JOBS = ("nurse", "carpenter", "teacher", "data engineer", "baker", "pilot", "translator")
_FOODS = ("ramen", "paella", "dumplings", "falafel", "pierogi", "tacos", "risotto")
_HOBBIES = ("bouldering", "chess", "sourdough baking", "birdwatching", "cycling", "ukulele")
_OPENERS = ("Sure!", "Got it:", "Happy to help:", "Okay!", "Of course:")
_CLOSERS = (" :)", " Cheers!", " -- your assistant", "!", " Have a nice day.")

_PREFIXES = ("", "", "Hey, ", "Quick one: ", "Hi! ", "Remind me: ", "Question: ", "So, ",
             "Assistant, ", "Hello again. ")
_SUFFIXES = ("", "", " Thanks.", " Please.", " :)", " Be quick.", " I forgot.")
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "name": ("What is my name?", "Do you remember my name?", "Who am I?", "Say my name."),
    "city": ("Where do I live?", "Which city am I in?", "What's my home town?"),
    "pet": ("Do I have pets?", "Tell me about my pet.", "What animal lives with me?"),
    "job": ("What do I do for work?", "What is my job?", "Where do I work?"),
    "food": ("What's my favourite food?", "What should I cook tonight?", "What do I like to eat?"),
    "hobby": ("What is my hobby?", "What do I do on weekends?", "Suggest a weekend plan."),
}


@dataclass(frozen=True)
class Persona:
    """One user's facts and the reply style they like."""

    name: str
    city: str
    pet: str
    job: str
    food: str
    hobby: str
    opener: str
    closer: str

    def answer(self, topic: str) -> str:
        facts = {
            "name": f"your name is {self.name}.",
            "city": f"you live in {self.city}.",
            "pet": f"you have {self.pet}.",
            "job": f"you work as a {self.job}.",
            "food": f"your favourite food is {self.food}.",
            "hobby": f"your hobby is {self.hobby}.",
        }
        return f"{self.opener} {facts[topic]}{self.closer}"


def make_persona(seed: int = 0) -> Persona:
    rng = random.Random(f"persona-{seed}")
    return Persona(rng.choice(_NAMES), rng.choice(_CITIES), rng.choice(_PETS), rng.choice(_JOBS),
                   rng.choice(_FOODS), rng.choice(_HOBBIES), rng.choice(_OPENERS),
                   rng.choice(_CLOSERS))


def generate_interactions(n: int, seed: int = 0, persona: Persona | None = None,
                          feedback_share: float = 0.15) -> list[dict[str, Any]]:
    """``n`` interactions (JSONL rows), a pure function of (n, seed, persona).

    About ``feedback_share`` of them carry feedback: half "up" on a good reply, half "down"
    on a generic reply, with the persona's reply as the correction.
    """
    persona = persona or make_persona(seed)
    rng = random.Random(f"interactions-{seed}")
    topics = sorted(_QUESTIONS)
    rows: list[dict[str, Any]] = []
    for k in range(n):
        topic = rng.choice(topics)
        question = rng.choice(_QUESTIONS[topic])
        # vary the prompt as real users do (a few hundred distinct prompts per persona)
        question = rng.choice(_PREFIXES) + question + rng.choice(_SUFFIXES)
        row: dict[str, Any] = {"id": f"sample-{seed}-{k}", "prompt": question,
                               "response": persona.answer(topic)}
        r = rng.random()
        if r < feedback_share / 2:
            row["feedback"] = "up"
        elif r < feedback_share:
            row["response"] = "I'm not sure, could you tell me more?"
            row["feedback"] = "down"
            row["correction"] = persona.answer(topic)
        rows.append(row)
    return rows


def constant_response_rows(n: int, response: str = "ok!", seed: int = 0) -> list[dict[str, Any]]:
    """The simplest learnable task: many different prompts, one short reply."""
    rng = random.Random(f"constant-{seed}")
    words = ("alpha", "bravo", "cargo", "delta", "ember", "flint", "gusto", "haven", "ionic")
    return [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + f" {k}",
             "response": response} for k in range(n)]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines atomically (temp file, fsync, rename, directory fsync)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(Path(path), text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=("persona", "constant"), default="persona")
    args = p.parse_args(argv)
    rows = (generate_interactions(args.n, args.seed) if args.kind == "persona"
            else constant_response_rows(args.n, seed=args.seed))
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} interactions to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

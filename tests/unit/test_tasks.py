"""The learning tasks are pure functions of the seed, with a held-out split that is no copy."""

from __future__ import annotations

import pytest

from agent.bench.tasks import TASKS, make_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_task(name: str) -> None:
    assert make_task(name, 3) == make_task(name, 3)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_seed_changes_the_task(name: str) -> None:
    tasks = [make_task(name, s) for s in range(4)]
    assert len({(t.train, t.heldout) for t in tasks}) > 1


@pytest.mark.parametrize("name", sorted(TASKS))
def test_heldout_prompts_never_occur_in_train(name: str) -> None:
    for seed in range(5):
        task = make_task(name, seed)
        assert task.train and task.heldout
        assert not {e.prompt for e in task.train} & {e.prompt for e in task.heldout}


def test_personal_facts_heldout_uses_unseen_phrasings() -> None:
    task = make_task("personal-facts", 0)
    strip = ("Hi! ", "Hey, ", "Quick one: ")

    def core(p: str) -> str:
        for s in strip:
            p = p.removeprefix(s)
        return p

    train_q = {core(e.prompt) for e in task.train}
    assert not train_q & {core(e.prompt) for e in task.heldout}
    # the facts themselves are the same on both sides: that is what must generalise
    assert {e.response for e in task.heldout} <= {e.response for e in task.train}
    assert {e.topic for e in task.heldout} == {"name", "city", "pet", "schedule"}


def test_reply_style_heldout_categories_are_unseen_but_share_the_signoff() -> None:
    task = make_task("reply-style", 1)
    assert not {e.topic for e in task.train} & {e.topic for e in task.heldout}
    signoff = task.info["signoff"]
    assert all(e.response.endswith(signoff) and e.response.startswith("- ")
               for e in task.train + task.heldout)


def test_label_words_are_balanced_labels() -> None:
    task = make_task("label-words", 2)
    assert task.metric == "accuracy" and len(task.labels) == 2
    for split in (task.train, task.heldout):
        counts = [sum(e.response == lab for e in split) for lab in task.labels]
        assert counts[0] == counts[1] == len(split) // 2


def test_sizes_and_unknown_task() -> None:
    task = make_task("personal-facts", 0, train_size=10, heldout_size=5)
    assert (len(task.train), len(task.heldout)) == (10, 5)
    with pytest.raises(ValueError, match="choose from"):
        make_task("nope")
    with pytest.raises(ValueError, match="at most"):
        make_task("label-words", 0, train_size=200, heldout_size=24)


def test_rows_are_trainer_jsonl_rows() -> None:
    rows = make_task("reply-style", 0).rows("train")
    assert set(rows[0]) == {"prompt", "response"}

"""How ``mobizo-bench fleet-learn`` splits the shared task over the fleet (fleet_sim.py):
by category, each device knows a part of the domain, the fleet all of it, and the held-out
questions are new ones over every category."""

from __future__ import annotations

from agent.bench.fleet_sim import CATEGORIES_PER_DEVICE, _by_category


def test_each_device_holds_two_categories_and_the_held_out_split_covers_all() -> None:
    parts, held = _by_category(0, 8, 8, 8)
    cats = {ex.topic for ex in held}
    assert len(cats) == 6 and len(held) == 12  # whole rounds over the six categories
    for part in parts:
        assert len(part) == 8 and len({ex.topic for ex in part}) == CATEGORIES_PER_DEVICE
    assert set().union(*({ex.topic for ex in p} for p in parts)) == cats  # the fleet: all
    pairs = [(ex.prompt, ex.response) for p in parts for ex in p]
    assert len(pairs) == len(set(pairs))  # no example on two devices
    assert not set(pairs) & {(ex.prompt, ex.response) for ex in held}  # none held out
    assert _by_category(0, 8, 8, 8) == (parts, held)  # a pure function of the seed
    assert _by_category(1, 8, 8, 8) != (parts, held)


def test_a_small_fleet_still_covers_every_category() -> None:
    parts, held = _by_category(3, 3, 4, 4)
    assert {ex.topic for p in parts for ex in p} == {ex.topic for ex in held}

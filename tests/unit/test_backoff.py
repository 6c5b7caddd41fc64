"""Reconnect backoff: exponential, capped, jittered, resettable."""

from __future__ import annotations

import random

import pytest

from agent.core.backoff import Backoff


def test_exponential_capped_without_jitter():
    b = Backoff(1.0, 8.0, 0.0)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay() == 1.0


def test_jitter_spreads_within_bounds():
    b = Backoff(1.0, 60.0, 0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    bases = [min(60.0, 2.0**i) for i in range(10)]
    assert all(base * 0.5 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len({round(d / base, 6) for d, base in zip(delays, bases, strict=True)}) > 1


def test_bad_bounds():
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, 0.1)
    with pytest.raises(ValueError):
        Backoff(1.0, 2.0, 1.5)

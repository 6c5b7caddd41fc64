"""Reconnect delays: exponential backoff with jitter (pure).

paho-mqtt's own reconnect doubles its delay without jitter, so a fleet that lost its broker
reconnects in lock-step; jitter spreads the herd ("Exponential Backoff And Jitter", AWS
Architecture Blog, 2015). We use "equal jitter": the delay is drawn from
``[d * (1 - jitter), d]`` so it never collapses to zero.
"""

from __future__ import annotations

import random


class Backoff:
    """Successive delays ``min, 2*min, 4*min, ... <= max``, each jittered. Not thread-safe."""

    def __init__(self, min_s: float, max_s: float, jitter: float,
                 rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s ({min_s}) <= max_s ({max_s})")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter {jitter} must be within [0, 1]")
        self._min, self._max, self._jitter = min_s, max_s, jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def reset(self) -> None:
        """Start again from ``min_s`` (call after a connection that really worked)."""
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt: the doubled base, capped at ``max_s``, jittered."""
        # 2.0, not 2: int ** int is typed Any (a negative exponent gives a float)
        base = min(self._max, self._min * (2.0 ** min(self._attempt, 62)))
        self._attempt += 1
        return base * (1.0 - self._jitter * self._rng.random())

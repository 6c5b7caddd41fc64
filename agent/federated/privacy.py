"""Optional Gaussian noise on a device's scalars, and the (epsilon, delta) it buys.

What a device releases per round is its accumulator over the m pool slots its steps drew
(m <= steps * q; which slots is a public function of the pool, the device and the step, not
of its data). Each slot is clipped to ``clip``, so adding or removing the device's whole data
changes the released vector by at most ``Delta = clip * sqrt(m)`` in L2 (client-level,
add-or-remove neighbours). With noise multiplier ``sigma`` every drawn slot gets
``N(0, (sigma * Delta)^2)``: the Gaussian mechanism, which is ``rho = 1 / (2 sigma^2)``-zCDP
per round (Bun & Steinke 2016, Prop. 1.6); R rounds compose to ``R * rho`` and

    epsilon(delta) = rho_R + 2 * sqrt(rho_R * ln(1 / delta))      (ibid., Prop. 1.3)

This is the bound the README states. (Flower's own RDP accountant needs the ``dp-accounting``
package, which pins an older ``attrs`` than this project's tools; the zCDP bound is a little
looser and has no dependency.) The server sees only the noisy values; the noise is drawn from
the operating system's randomness, never from a seed the server knows.
"""

from __future__ import annotations

import math
import secrets

import torch

TAIL = 6.0  # noisy slots are clamped at clip + TAIL noise standard deviations (post-processing)


def sensitivity(clip: float, slots: int) -> float:
    """L2 sensitivity of a released accumulator of ``slots`` slots each clipped to ``clip``."""
    return clip * math.sqrt(max(1, slots))


def bound(clip: float, noise: float, slots: int) -> float:
    """The largest |value| a slot may carry: ``clip``, plus the clamped noise tail."""
    return clip + TAIL * noise * sensitivity(clip, slots)


def add_noise(values: torch.Tensor, clip: float, noise: float, slots: int,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """``values`` [m] (already clipped) plus ``N(0, (noise * Delta)^2)``, clamped to the bound."""
    if noise <= 0:
        return values
    gen = generator
    if gen is None:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(secrets.randbits(63))  # unpredictable to the server
    std = noise * sensitivity(clip, slots)
    noisy = values + std * torch.randn(values.shape, generator=gen, dtype=torch.float64)
    lim = bound(clip, noise, slots)
    return noisy.clamp(-lim, lim)


def epsilon(noise: float, rounds: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` noisy releases at ``delta`` (inf without noise)."""
    if noise <= 0:
        return math.inf
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    rho = rounds / (2.0 * noise * noise)
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))

"""How small ε may be for a bundle's quantized base (issue 8); pure, for trainer and exporter.

Dynamic activation quantization (8da8w, 8da4w) adds noise to every loss that does not cancel
in L⁺ − L⁻; with ε below ~1e-2 the projected gradients g_i = (L⁺ − L⁻)/(2ε) are dominated by it
(issue 8 probe on the 134M shape: correlation with fp32 0.995 at ε = 1e-2).
"""

from __future__ import annotations

from typing import Final

MIN_EPSILON: Final[dict[str, float]] = {"none": 0.0, "8da8w": 1e-2, "8da4w": 1e-2}


def epsilon_warning(scheme: str, epsilon: float) -> str | None:
    """A warning text when ``epsilon`` is below what ``scheme`` tolerates, else None."""
    floor = MIN_EPSILON.get(scheme, 0.0)
    if epsilon < floor:
        return (f"epsilon {epsilon:g} is below {floor:g}, the smallest this bundle's {scheme} "
                f"quantized base tolerates: activation-quantization noise does not cancel in "
                f"L+ - L- and the projected gradients turn into noise. Set epsilon >= {floor:g} "
                f"(or raise q)")
    return None

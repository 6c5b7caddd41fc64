"""The MobiZO estimator's settings vocabulary, torch-free (arXiv 2409.15520 §5).

The daemon builds and validates a training job without importing torch, so the literal types
and paper defaults the job schema needs live here; :mod:`agent.core.zo` re-exports them.
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["mezo", "prge", "prge-dual"]
MODES: tuple[Mode, ...] = ("mezo", "prge", "prge-dual")
Schedule = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "linear", "cosine")

# Paper defaults (arXiv 2409.15520 §5): ε = 1e-2, lr 5e-5 … 1e-4, q = 4 with q·b = 16.
DEFAULT_EPS = 1e-2
DEFAULT_LR = 1e-4
DEFAULT_Q = 4
DEFAULT_QUERY_BATCH = 4


def slices_for(mode: Mode, q: int) -> int:
    """Models evaluated per program call (S) in ``mode``: 1 (mezo), q (prge), 2q (prge-dual)."""
    return {"mezo": 1, "prge": q, "prge-dual": 2 * q}[mode]

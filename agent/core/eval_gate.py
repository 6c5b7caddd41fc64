"""The eval gate: publish a candidate adapter only if it beats the active one on held-out data.

Pure: the daemon measures both held-out losses (``mobizo-agent eval`` in a child process) and
asks :func:`judge`. The rule follows ``[adapters]``:

- ``relative``: publish when ``loss_candidate <= loss_active * (1 - margin)``;
- ``absolute``: publish when ``loss_candidate <= loss_active - margin``.

With ``margin == 0`` a tie is not an improvement, so the candidate must be strictly lower:
publishing an adapter no better than the one serving only costs a swap. A candidate whose
loss is not a finite number, or an evaluation on too few held-out examples to mean anything,
is rejected whatever the numbers say.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

MarginMode = Literal["relative", "absolute"]


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and the numbers behind it (stored in the adapter manifest).

    Attributes:
        publish: the candidate goes to the registry as the new active adapter.
        reason: one human line ("candidate 1.92 beats active 2.31 by 16.9% (needs 1.0%)").
        candidate_loss: held-out loss of the candidate.
        active_loss: held-out loss of the adapter serving now.
        threshold: the loss the candidate had to reach (<=, or < when margin is 0).
        margin: the configured margin.
        mode: relative or absolute.
        examples: held-out examples evaluated.
    """

    publish: bool
    reason: str
    candidate_loss: float
    active_loss: float
    threshold: float
    margin: float
    mode: MarginMode
    examples: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (non-finite losses become None)."""
        out = asdict(self)
        for key in ("candidate_loss", "active_loss", "threshold"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out

    @property
    def improvement(self) -> float | None:
        """Relative improvement of the candidate over the active adapter, or None."""
        if not (math.isfinite(self.candidate_loss) and math.isfinite(self.active_loss)):
            return None
        if self.active_loss == 0:
            return None
        return (self.active_loss - self.candidate_loss) / self.active_loss


def threshold_of(active_loss: float, margin: float, mode: MarginMode) -> float:
    """The loss a candidate must reach to beat ``active_loss`` by ``margin``."""
    if mode == "relative":
        return active_loss * (1.0 - margin)
    return active_loss - margin


def judge(
    candidate_loss: float,
    active_loss: float,
    *,
    margin: float,
    mode: MarginMode = "relative",
    examples: int,
    min_examples: int = 1,
) -> GateResult:
    """Decide publish or reject for one candidate.

    Args:
        candidate_loss: mean held-out loss of the candidate.
        active_loss: mean held-out loss of the active adapter on the same examples.
        margin: how much better the candidate must be (a share in relative mode).
        mode: ``relative`` or ``absolute``.
        examples: how many held-out examples the losses cover.
        min_examples: fewer than this and the comparison is noise: reject.

    Returns:
        The verdict with its reason.

    Raises:
        ValueError: a negative margin, or a relative margin of 1 or more.
    """
    if margin < 0 or (mode == "relative" and margin >= 1):
        raise ValueError(f"margin {margin} is out of range for {mode} mode")
    threshold = threshold_of(active_loss, margin, mode) if math.isfinite(active_loss) else math.inf

    def verdict(publish: bool, reason: str) -> GateResult:
        return GateResult(publish, reason, candidate_loss, active_loss, threshold, margin, mode,
                          examples)

    if examples < min_examples:
        return verdict(False, f"only {examples} held-out examples (< {min_examples}); "
                              "not enough to judge")
    if not math.isfinite(candidate_loss):
        return verdict(False, f"candidate loss is {candidate_loss} (diverged)")
    if not math.isfinite(active_loss):
        # A broken active adapter: any finite candidate is better.
        return verdict(True, f"candidate {candidate_loss:.4f} replaces an active adapter whose "
                             f"loss is {active_loss}")
    need = f"{margin:.1%}" if mode == "relative" else f"{margin:g}"
    better = candidate_loss < threshold if margin == 0 else candidate_loss <= threshold
    gain = active_loss - candidate_loss
    shown = f"{gain / active_loss:.1%}" if mode == "relative" and active_loss else f"{gain:.4g}"
    if better:
        return verdict(True, f"candidate {candidate_loss:.4f} beats active {active_loss:.4f} "
                             f"by {shown} (needs {need})")
    return verdict(False, f"candidate {candidate_loss:.4f} does not beat active "
                          f"{active_loss:.4f} by {need} (threshold {threshold:.4f})")

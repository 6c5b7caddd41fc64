"""The optimisers ``mobizo-bench learn`` compares, and what one step of each costs.

A forward pass is one sequence through the model (issue 7): a ZO step evaluates 2q perturbed
models on b sequences, so it costs 2·q·b forwards whatever the mode batches into one call
(MeZO q=1 b=16: 32; P-RGE dual q=4 b=4: 32; q=16 b=1: 32). A first-order step costs b
forwards plus a backward pass, which is not counted as forwards (it shows in the seconds).

Spec strings (``--methods``), comma-separated ``key=value`` after the kind::

    mezo:q=1,b=16          prge-dual:q=4,b=4,lr=5e-3          fo:b=16,opt=adam,lr=1e-3
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from agent.core import zo

Kind = Literal["zo", "fo"]
Optimizer = Literal["sgd", "adam"]

# Found by the sweeps recorded in agent/bench/learn.py's docstring (starter bundle, all seven
# projections; rank 16 on all layers, rank 32 on the last two): ZO needs a far larger step than
# the paper's 1e-4 on a random-weight model with B starting at zero, and ε large enough that
# L± differ well above fp32 (and int8 activation) noise.
DEFAULT_ZO_LR = 1e-2
DEFAULT_ZO_EPS = 1e-2
DEFAULT_FO_LR = 1e-3


@dataclass(frozen=True)
class MethodSpec:
    """One optimiser configuration.

    Attributes:
        kind: ``zo`` (an ExecuTorch train program) or ``fo`` (eager autograd on B, A frozen).
        mode: the ZO mode (mezo / prge / prge-dual); None for ``fo``.
        q: queries per step (1 for ``fo``).
        batch: sequences per query (per step for ``fo``).
        lr: learning rate.
        eps: ZO perturbation scale (unused by ``fo``).
        optimizer: ``fo`` only: ``adam`` or ``sgd``.
    """

    kind: Kind
    mode: zo.Mode | None
    q: int
    batch: int
    lr: float
    eps: float = DEFAULT_ZO_EPS
    optimizer: Optimizer = "adam"

    @property
    def name(self) -> str:
        if self.kind == "fo":
            return f"fo-{self.optimizer}-b{self.batch}"
        return f"{self.mode}-q{self.q}-b{self.batch}"

    @property
    def method(self) -> str:
        """The JSON ``method`` field: the mode, or ``fo-lora`` for the first-order baseline."""
        return "fo-lora" if self.kind == "fo" else str(self.mode)

    @property
    def forwards_per_step(self) -> int:
        return self.batch if self.kind == "fo" else 2 * self.q * self.batch

    @property
    def slices(self) -> int:
        return 1 if self.kind == "fo" or self.mode is None else zo.slices_needed(self.mode, self.q)


def default_methods(zo_lr: float = DEFAULT_ZO_LR, eps: float = DEFAULT_ZO_EPS,
                    fo_lr: float = DEFAULT_FO_LR) -> list[MethodSpec]:
    """The issue's four: MeZO (1, 16), P-RGE dual (4, 4), P-RGE dual (16, 1), first-order."""
    return [
        MethodSpec("zo", "mezo", 1, 16, zo_lr, eps),
        MethodSpec("zo", "prge-dual", 4, 4, zo_lr, eps),
        MethodSpec("zo", "prge-dual", 16, 1, zo_lr, eps),
        MethodSpec("fo", None, 1, 16, fo_lr, 0.0, "adam"),
    ]


def parse_method(text: str, *, zo_lr: float = DEFAULT_ZO_LR, eps: float = DEFAULT_ZO_EPS,
                 fo_lr: float = DEFAULT_FO_LR) -> MethodSpec:
    """Parse one spec string (see the module docstring).

    Raises:
        ValueError: unknown kind or key, or a value out of range; the message shows the form.
    """
    kind, _, rest = text.strip().partition(":")
    form = "expected e.g. 'mezo:q=1,b=16', 'prge-dual:q=4,b=4,lr=1e-2' or 'fo:b=16,opt=adam'"
    if kind == "fo":
        spec = MethodSpec("fo", None, 1, 16, fo_lr, 0.0, "adam")
    elif kind in zo.MODES:
        spec = MethodSpec("zo", kind, 1, 16, zo_lr, eps)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown method kind {kind!r} in {text!r}; {form}")
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} in {text!r} is not key=value; {form}")
        try:
            if key == "q" and kind != "fo":
                spec = replace(spec, q=int(value))
            elif key in ("b", "batch"):
                spec = replace(spec, batch=int(value))
            elif key == "lr":
                spec = replace(spec, lr=float(value))
            elif key in ("eps", "epsilon") and kind != "fo":
                spec = replace(spec, eps=float(value))
            elif key == "opt" and kind == "fo" and value in ("adam", "sgd"):
                spec = replace(spec, optimizer=value)  # type: ignore[arg-type]
            else:
                raise ValueError(f"unknown or invalid key {key!r} for {kind}")
        except ValueError as exc:
            raise ValueError(f"bad method {text!r}: {exc}; {form}") from None
    if spec.q < 1 or spec.batch < 1 or spec.lr <= 0 or (spec.kind == "zo" and spec.eps <= 0):
        raise ValueError(f"bad method {text!r}: q, b, lr and eps must be positive; {form}")
    return spec

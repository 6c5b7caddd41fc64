"""``mobizo-bench learn --quantize``: which base quantization a run measures (issue 8).

The learning benchmark can export its starter bundle with a quantized base (int8 dynamic
activations × int8 per-channel or int4 group-wise weights, exporter/quantize.py) so the
held-out loss of fp32 and quantized runs compare side by side with the same seed. Pure
checks only: they run before any export and say what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from agent.core.bundle import QUANT_SCHEMES

SCHEMES = QUANT_SCHEMES
# exporter.quantize.INT4_GROUP; repeated here so the CLI's checks need no torch import
# (tests/bench/test_learn_quant.py keeps the two equal).
INT4_GROUP: Final[int] = 32


def starter_linear_inputs() -> dict[str, int]:
    """Input size of each base linear of the starter preset (what 8da4w groups over)."""
    from exporter.starter import STARTER_CONFIG as cfg

    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    return {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": heads * head_dim,
            "gate_proj": hidden, "up_proj": hidden, "down_proj": inter}


def scheme_problem(scheme: str, linear_inputs: Mapping[str, int]) -> str | None:
    """Why ``scheme`` cannot quantize linears with these input sizes, or None if it can."""
    if scheme not in SCHEMES:
        return f"unknown --quantize scheme {scheme!r}; choose one of {', '.join(SCHEMES)}"
    if scheme == "8da4w":
        bad = {n: k for n, k in linear_inputs.items() if k % INT4_GROUP}
        if bad:
            shown = ", ".join(f"{n} has {k}" for n, k in sorted(bad.items()))
            return (f"--quantize 8da4w groups weights by {INT4_GROUP} input features, but "
                    f"{shown} (not a multiple of {INT4_GROUP}); use --quantize 8da8w")
    return None


def bundle_scheme_problem(requested: str | None, bundle_scheme: str, bundle: str) -> str | None:
    """Why ``--quantize requested`` does not fit a given ``--bundle``, or None if it does.

    A bundle's programs are lowered with one scheme; the benchmark cannot requantize them, so
    asking for another scheme is an error rather than a silently different measurement.
    """
    if requested is None or requested == bundle_scheme:
        return None
    return (f"--quantize {requested} does not match --bundle {bundle}, which was exported with "
            f"--quantize {bundle_scheme}; drop --quantize to measure the bundle as it is, or "
            f"re-export it with `mobizo-export --quantize {requested}`")

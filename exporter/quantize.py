"""Weight quantization of the frozen base linears (issue 8: int8/int4 base under fp32 LoRA).

The base of ZO training is frozen, so it can be quantized while the LoRA path stays fp32 —
the QLoRA idea, done for an inference engine. Schemes (torchao 0.18 → XNNPACK delegate):

- ``8da8w``: int8 dynamic (per-token, asymmetric) activations × int8 per-output-channel
  symmetric weights. g_i correlate 0.997 with fp32 eager at ε = 1e-2 and peak memory is 0.62×
  (110M shape). Speed depends on the CPU's int8 dot-product instructions (``mobizo-bench
  kernels``): issue 8's probe measured a 2.4× faster ZO step; on the AVX2-only CI machines the
  int8 GEMM runs at fp32 speed (1.07×) and the step is 1.05× faster.
- ``8da4w``: the same activations × int4 group-32 weights. Smaller and faster still, but int4
  rounding changes the model: g_i are faithful to the int4 model, not to the fp32 one.

Quantized: every frozen base linear — the seven projections of each block (``LoraLinear.base``)
and the LM head (``lm_head``: 32000×768 on the 110M shape, 98 MB in fp32, the largest single
matmul: 22 % of the linear FLOPs with logits at every position, 13 % with the response-half loss
window). The head uses ``HEAD_SCHEME[scheme]`` (see there for why 8da4w keeps an int8 head).
Embeddings, norms and the LoRA path (``lora_a`` and the ``bmm`` with ``lora_b``) stay fp32.
Weight-only configs are not offered on purpose: they either fail to lower or lower and give
silently wrong losses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import torch
from torch import nn

from agent.core.bundle import QUANT_SCHEMES, BundleManifest, QuantScheme
from agent.core.lora_layout import LoraLayout
from agent.core.quant_guard import MIN_EPSILON, epsilon_warning  # noqa: F401 (re-export)
from agent.errors import ExportError

log = logging.getLogger(__name__)

Scheme = QuantScheme
SCHEMES = QUANT_SCHEMES
INT4_GROUP: Final[int] = 32

# Max |Δloss| between an exported quantized program and the eager model quantized the same way.
# XNNPACK's int8 kernels and torchao's reference differ in rounding of the dynamic activation
# scales; losses are O(5) on the starter shape. Measured (tests/exporter/test_quantize.py):
# well under 1e-2; a wrongly lowered program is off by O(0.1..10).
QUANT_PROBE_ATOL: Final[float] = 5e-2


def check_scheme(scheme: str, backend: str) -> None:
    """Refuse an unknown scheme or one the backend cannot lower, before any work starts."""
    if scheme not in SCHEMES:
        raise ExportError(f"unknown --quantize scheme {scheme!r}; choose one of "
                          f"{', '.join(SCHEMES)}")
    if scheme != "none" and backend != "xnnpack":
        raise ExportError(
            f"--quantize {scheme} needs --backend xnnpack: the portable backend has no "
            "quantized kernels for these ops; use --backend xnnpack or --quantize none"
        )


def config_for(scheme: str):  # -> torchao AOBaseConfig
    """The torchao config of ``scheme`` (not ``none``)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                     weight_granularity=PerAxis(0))
    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                     weight_granularity=PerGroup(INT4_GROUP))
    raise ExportError(f"no quantization config for scheme {scheme!r}")


# The LM head's weight scheme under each base scheme: every loss and every generated token goes
# through it. 8da4w keeps an int8 head. Measured eagerly on the 110M shape (random weights,
# T = 128, q = 12, ε = 1e-2, 17:49 UTC 2026-11-28), the head's own error relative to the fp32
# head's logits is ~1 % at int8 but ~9 % at int4 (int4 base: logit error 0.395 → 0.395 with an
# int8 head, → 0.406 with an int4 one), and g_i correlate 0.9999 with the fp32-head model at int8
# vs 0.998 at int4 — 20× the deviation, for a ~12 MB (≈ 7 % of the train .pte) saving.
HEAD_SCHEME: Final[dict[str, str]] = {"8da8w": "8da8w", "8da4w": "8da8w"}
LM_HEAD: Final[str] = "lm_head"


def base_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the base linears of every ``LoraLinear`` in ``model``."""
    from exporter.layers import LoraLinear

    return [f"{name}.base" for name, mod in model.named_modules() if isinstance(mod, LoraLinear)]


def quantize_base(model: nn.Module, scheme: str) -> int:
    """Quantize the frozen base linears and the LM head of ``model`` in place.

    ``model`` is an ``exporter.model.Decoder`` (or anything holding ``LoraLinear`` modules and
    an ``lm_head`` linear). The block linears get ``scheme``, the head ``HEAD_SCHEME[scheme]``.
    A ``none`` scheme is a no-op. Returns how many linears were quantized (head included).
    Linears whose input size is not a multiple of the int4 group are refused (they would
    silently stay fp32 or fail to lower later).
    """
    if scheme == "none":
        return 0
    names = base_linear_names(model)
    if not names:
        raise ExportError("the model has no base linears to quantize")
    plan: dict[str, list[str]] = {scheme: names}
    head = getattr(model, LM_HEAD, None)
    if isinstance(head, nn.Linear):
        plan.setdefault(HEAD_SCHEME[scheme], []).append(LM_HEAD)
    done = 0
    for sub_scheme, group in plan.items():
        done += _quantize_linears(model, group, sub_scheme)
    log.info("quantized %d linears with %s (LM head: %s)", done, scheme,
             HEAD_SCHEME[scheme] if isinstance(head, nn.Linear) else "none")
    return done


def _quantize_linears(model: nn.Module, names: list[str], scheme: str) -> int:
    """Quantize exactly the linears ``names`` of ``model`` with ``scheme``; refuse if not all."""
    from torchao.quantization import quantize_

    if scheme == "8da4w":
        for name in sorted(names):
            lin = model.get_submodule(name)
            if lin.in_features % INT4_GROUP:
                raise ExportError(
                    f"--quantize 8da4w needs every base linear's input size to be a multiple "
                    f"of {INT4_GROUP}; {name} has {lin.in_features}. Use --quantize 8da8w"
                )
    wanted = set(names)
    done: list[str] = []

    def _filter(mod: nn.Module, fqn: str) -> bool:
        hit = isinstance(mod, nn.Linear) and fqn in wanted
        if hit:
            done.append(fqn)
        return hit

    with torch.no_grad():
        quantize_(model, config_for(scheme), filter_fn=_filter)
    if len(done) != len(wanted):
        raise ExportError(f"quantized {len(done)} of {len(wanted)} base linears; torchao did not "
                          "visit them all (report this)")
    return len(done)


def probe_quantized(bundle: Path, manifest: BundleManifest, core: nn.Module,
                    layout: LoraLayout, *, atol: float = QUANT_PROBE_ATOL) -> dict[str, float]:
    """Check every exported method against ``core`` (quantized the same way) run eagerly.

    Raises ExportError when a method computes something else (or non-finite values): a
    program that lowers but computes garbage must never reach a bundle. Returns the max
    |Δloss| / |Δlogit| per method, for the log and the tests.
    """
    from agent.io.runtime import TrainProgram
    from exporter.model import TrainForward
    from exporter.probe import (  # the same probe batches as the fp32 probe
        infer_probe_batch,
        infer_probe_error,
        probe_generator,
        train_probe_batch,
    )

    gen = probe_generator()
    errs: dict[str, float] = {}
    for shape in manifest.train.shapes:
        s, b = shape.slices, shape.batch
        tokens, mask, lora_b = train_probe_batch(gen, manifest, shape, layout.num_params)
        got = TrainProgram(bundle, slices=s, batch=b).losses(tokens, mask, lora_b)
        with torch.no_grad():
            want = TrainForward(core, slices=s, batch=b, max_length=manifest.train.max_length,
                                max_targets=manifest.train.max_targets)(tokens, mask, lora_b)
        errs[shape.method] = err = float((got - want).abs().max())
        if not torch.isfinite(got).all() or not err <= atol:
            raise ExportError(
                f"the exported {manifest.quantize} method {shape.method} disagrees with the "
                f"eager model quantized the same way (max |Δloss| = {err:.3g} > {atol}); "
                "refusing to write this bundle. Export with --quantize none, and report the "
                "checkpoint"
            )
    if manifest.infer is None:
        return errs
    ids, row = infer_probe_batch(gen, manifest, layout.num_params)
    with torch.no_grad():
        fwd = TrainForward(core, slices=1, batch=1, max_length=len(ids))
        ref = core.lm_head(fwd.hidden(torch.tensor([ids]), row[None]))[0]
    errs["infer"] = err = infer_probe_error(bundle, ids, row, ref)
    if not err <= atol * 5:
        raise ExportError(
            f"the exported {manifest.quantize} infer program disagrees with the eager model "
            f"quantized the same way (max |Δlogit| = {err:.3g}); refusing to write this "
            "bundle. Export with --quantize none, and report the checkpoint"
        )
    log.info("quantized probe (%s): %s", manifest.quantize,
             ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    return errs

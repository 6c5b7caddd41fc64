"""The probe batches an export checks its programs with, and the check against transformers.

A bundle is written only once every exported method agrees with a reference on a seeded probe
batch: transformers' own model for an fp32 export (:func:`probe_against_transformers`), the
eager decoder quantized the same way for a quantized one (exporter/quantize.py). Both draw
their batches here, from the same seed, so the two probes see the same inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from agent.core.bundle import BundleManifest, TrainShape
from agent.core.lora_layout import LoraLayout
from agent.errors import ExportError

log = logging.getLogger(__name__)

PROBE_SEED = 1234
PROBE_ATOL = 2e-3  # losses are O(10); XNNPACK matches eager to ~1e-6 relative (DESIGN §3)


def probe_generator() -> torch.Generator:
    """The seeded generator every probe draws its batches from, in order."""
    return torch.Generator().manual_seed(PROBE_SEED)


def probe_mask(batch: int, length: int, max_targets: int) -> torch.Tensor:
    """A loss mask with a prompt-like unmasked start whose targets all fit the window (so the
    probe compares every target with the reference, which has no window)."""
    mask = torch.zeros(batch, length)
    start = max(1, length - min(max_targets, (3 * length) // 4))
    mask[:, start:] = 1
    return mask


def train_probe_batch(gen: torch.Generator, manifest: BundleManifest, shape: TrainShape,
                      num_params: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [b, T], loss_mask [b, T], lora_b [S, P])`` for one train method."""
    t = manifest.train.max_length
    tokens = torch.randint(0, manifest.model.vocab_size, (shape.batch, t), generator=gen)
    mask = probe_mask(shape.batch, t, manifest.train.max_targets)
    lora_b = torch.randn(shape.slices, num_params, generator=gen) * 0.02
    return tokens, mask, lora_b


def infer_probe_batch(gen: torch.Generator, manifest: BundleManifest,
                      num_params: int) -> tuple[list[int], torch.Tensor]:
    """``(token ids, one adapter's lora_b row [P])`` for the infer program: one prefill chunk
    and a few tokens more, within the context."""
    assert manifest.infer is not None
    n = min(manifest.infer.prefill_chunk + 3, manifest.infer.max_context)
    ids = torch.randint(0, manifest.model.vocab_size, (n,), generator=gen).tolist()
    row = torch.randn(num_params, generator=gen) * 0.02
    return ids, row


def infer_probe_error(bundle: Path, ids: list[int], row: torch.Tensor,
                      ref_logits: torch.Tensor) -> float:
    """Max |Δlogit| of the infer program (prefill all but the last token, then decode it)
    against reference logits [n, vocab] of the whole sequence."""
    from agent.io.runtime import InferProgram

    prog = InferProgram(bundle)
    got_prev = prog.forward(ids[:-1], 0, row.numpy())
    got_last = prog.forward(ids[-1:], len(ids) - 1, row.numpy())
    want: np.ndarray = ref_logits.numpy()
    return max(float(abs(got_prev - want[-2]).max()), float(abs(got_last - want[-1]).max()))


def probe_against_transformers(bundle: Path, manifest: BundleManifest, hf: torch.nn.Module,
                               layout: LoraLayout, lora_a: dict[str, torch.Tensor]) -> None:
    """Run every exported method on a probe batch and compare with transformers' model."""
    from agent.io.runtime import TrainProgram
    from exporter.reference import hf_losses, merged_model

    gen = probe_generator()
    for shape in manifest.train.shapes:
        tokens, mask, lora_b = train_probe_batch(gen, manifest, shape, layout.num_params)
        got = TrainProgram(bundle, slices=shape.slices, batch=shape.batch).losses(
            tokens, mask, lora_b)
        want = hf_losses(hf, layout, lora_a, tokens, mask, lora_b)
        err = float((got - want).abs().max())
        if not torch.isfinite(got).all() or err > PROBE_ATOL:
            raise ExportError(
                f"the exported method {shape.method} disagrees with transformers' model "
                f"(max |Δloss| = {err:.3g} > {PROBE_ATOL}); refusing to write this bundle. "
                "Try --backend portable, and report the checkpoint"
            )
        log.info("probe %s: max |Δloss| %.2e", shape.method, err)
    if manifest.infer is None:
        return
    ids, row = infer_probe_batch(gen, manifest, layout.num_params)
    with torch.no_grad():
        ref = merged_model(hf, layout, lora_a, row.numpy())(torch.tensor([ids])).logits[0]
    err = infer_probe_error(bundle, ids, row, ref)
    if err > PROBE_ATOL * 5:
        raise ExportError(
            f"the exported infer program disagrees with transformers' model (max |Δlogit| = "
            f"{err:.3g}); refusing to write this bundle. Try --backend portable"
        )
    log.info("probe infer: max |Δlogit| %.2e", err)

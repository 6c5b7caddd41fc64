"""Every supported family exports, and both programs equal transformers' model.

One tiny ``save_pretrained`` checkpoint per family (2 layers, width 64; qwen2 with random q/k/v
biases). The qwen2 bundle carries LoRA on the last layer only, so the exported prefix-sharing
path (frozen prefix once, hidden state repeated per slice) is covered too. Bundles are cached
like the starter bundle (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.core.bundle import lora_layout_of
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram
from exporter.families import FAMILIES
from exporter.reference import hf_losses, load_base_model, load_lora_a, merged_model
from tests.exporter.tiny import FAMILY_LORA_LAYERS, family_bundle_path

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module", params=[f.name for f in FAMILIES])
def family_bundle(request, bundle_cache_dir) -> tuple[str, Path]:
    return request.param, family_bundle_path(bundle_cache_dir, request.param)


def test_manifest_family_and_layers(family_bundle):
    family, bundle = family_bundle
    m = read_manifest(bundle)
    assert m.model.family == family and not m.base.random_weights
    assert m.lora.layers == ((0, 1) if FAMILY_LORA_LAYERS[family] == "all" else (1,))


def test_train_program_matches_transformers(family_bundle):
    _, bundle = family_bundle
    m = read_manifest(bundle)
    layout = lora_layout_of(m)
    hf = load_base_model(m)
    lora_a = load_lora_a(bundle, layout)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, m.model.vocab_size, (2, 16), generator=gen)
    mask = torch.ones(2, 16)
    mask[:, :5] = 0
    for s in (1, 3):
        lora_b = torch.randn(s, layout.num_params, generator=gen) * 0.05
        got = TrainProgram(bundle, slices=s, batch=2).losses(tokens, mask, lora_b)
        torch.testing.assert_close(got, hf_losses(hf, layout, lora_a, tokens, mask, lora_b),
                                   atol=1e-4, rtol=1e-5)


def test_infer_program_matches_transformers(family_bundle):
    _, bundle = family_bundle
    m = read_manifest(bundle)
    layout = lora_layout_of(m)
    hf = load_base_model(m)
    row = np.random.default_rng(1).normal(0, 0.05, layout.num_params).astype(np.float32)
    ref = merged_model(hf, layout, load_lora_a(bundle, layout), row)
    ids = list(range(3, 23))  # 20 tokens: a full prefill chunk, a padded one, then decode
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    prog = InferProgram(bundle)
    np.testing.assert_allclose(prog.forward(ids[:19], 0, row), want[18], atol=1e-4)
    np.testing.assert_allclose(prog.forward(ids[19:], 19, row), want[19], atol=1e-4)

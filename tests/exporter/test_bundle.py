"""The starter bundle: layout, manifest, adapter, and programs equal to transformers' model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from agent.core.bundle import lora_layout_of
from agent.core.lora_layout import CANONICAL_TARGETS, peft_b_to_flat
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram
from exporter.reference import (
    EagerTrainProgram,
    eager_generate,
    hf_losses,
    load_base_model,
    load_lora_a,
    merged_model,
)

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def base(starter_bundle):
    return load_base_model(read_manifest(starter_bundle))


def test_manifest_says_what_it_is(starter_bundle):
    m = read_manifest(starter_bundle)
    assert m.base.random_weights and "random" in m.base.note
    assert m.model.family == "llama" and m.lora.targets == CANONICAL_TARGETS
    assert m.lora.rank == 16 and m.lora.alpha == 32
    assert {(s.slices, s.batch) for s in m.train.shapes} == {(1, 2), (2, 2), (4, 2)}
    assert set(m.versions) >= {"torch", "executorch", "transformers"}
    assert lora_layout_of(m).num_params == m.lora.num_params


def test_adapter_is_peft_with_zero_b(starter_bundle):
    m = read_manifest(starter_bundle)
    cfg = json.loads((starter_bundle / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32
    assert cfg["target_modules"] == list(CANONICAL_TARGETS)
    assert cfg["layers_to_transform"] == list(m.lora.layers)
    tensors = load_file(str(starter_bundle / "adapter" / "adapter_model.safetensors"))
    layout = lora_layout_of(m)
    assert not peft_b_to_flat(layout, tensors).any()
    a = tensors[layout.entries[0].peft_a_key]
    assert a.shape == (16, m.model.hidden_size) and np.abs(a).max() > 0


@pytest.mark.parametrize("slices", [1, 2, 4])
def test_train_program_matches_transformers(starter_bundle, base, slices):
    m = read_manifest(starter_bundle)
    layout = lora_layout_of(m)
    prog = TrainProgram(starter_bundle, slices=slices, batch=2)
    gen = torch.Generator().manual_seed(slices)
    tokens = torch.randint(0, 256, (2, 40), generator=gen)  # shorter than T: padded inside
    mask = torch.zeros(2, 40)
    mask[0, 10:] = 1
    mask[1, 20:35] = 1
    lora_b = torch.randn(slices, layout.num_params, generator=gen) * 0.02
    got = prog.losses(tokens, mask, lora_b)
    want = hf_losses(base, layout, load_lora_a(starter_bundle, layout), tokens, mask, lora_b)
    assert got.shape == (slices,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    eager = EagerTrainProgram(starter_bundle, slices=slices, batch=2, hf_model=base)
    torch.testing.assert_close(eager.losses(tokens, mask, lora_b), want, atol=1e-4, rtol=1e-5)


def test_infer_program_generates_like_transformers(starter_bundle, base):
    m = read_manifest(starter_bundle)
    layout = lora_layout_of(m)
    row = np.random.default_rng(0).normal(0, 0.05, layout.num_params).astype(np.float32)
    ref_model = merged_model(base, layout, load_lora_a(starter_bundle, layout), row)
    prompt = list(b"Hello there, how are you today?")  # 31 tokens: two prefill chunks
    want = eager_generate(ref_model, prompt, 12)
    prog = InferProgram(starter_bundle)
    got, pos, ids = [], 0, prompt
    for _ in range(12):
        logits = prog.forward(ids, pos, row)
        pos += len(ids)
        ids = [int(np.argmax(logits))]
        got.append(ids[0])
    assert got == want
    with torch.no_grad():
        ref_logits = ref_model(torch.tensor([prompt])).logits[0, -1].numpy()
    prog.reset()
    np.testing.assert_allclose(prog.forward(prompt, 0, row), ref_logits, atol=1e-4)
    # a different adapter on the same loaded program: no reload, different answer
    zero = np.zeros_like(row)
    assert np.abs(prog.forward(prompt, 0, zero) - ref_logits).max() > 1e-3


def test_program_inputs_are_borrowed_not_copied(starter_bundle):
    """Inputs are left out of memory planning, so the runtime borrows the caller's tensors:
    a P-RGE step's B stack is not copied into the arena beside the host's, and generation
    does not copy the adapter on every token (exporter/lower.py)."""
    from executorch.runtime import Runtime

    m = read_manifest(starter_bundle)
    assert m.infer is not None and m.weights is not None
    programs = {m.train.program: [s.method for s in m.train.shapes] + [m.train.head_method],
                m.infer.program: ["prefill", "decode"]}
    for file, methods in programs.items():
        program = Runtime.get().load_program(starter_bundle / file,
                                             data_path=starter_bundle / m.weights.file)
        for name in methods:
            meta = program.load_method(name).metadata
            planned = [i for i in range(meta.num_inputs())
                       if meta.input_tensor_meta(i).is_memory_planned()]
            assert planned == [], f"{file}:{name} copies inputs {planned} into its arena"

"""Every supported family exports, and both programs equal transformers' model.

One tiny ``save_pretrained`` checkpoint per case of tests/exporter/tiny.py ``FAMILY_CASES``
(2 layers, width 64): every row of exporter/families.py, plus a Llama with tied embeddings
and Llama 3.x rope scaling. Per case: the train program's losses and the infer program's
logits equal transformers' (1e-5 relative), greedy tokens equal transformers' ``generate``,
a served chat (the inference service's generator and codec on the real runtime) and a ZO
train step (the trainer on train.pte) run. Bundles carrying LoRA on the last layer only cover
the prefix-sharing path. Bundles are cached like the starter bundle (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.core.bundle import lora_layout_of
from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram
from exporter.reference import (
    eager_generate,
    hf_losses,
    load_base_model,
    load_lora_a,
    merged_model,
)
from tests.exporter.tiny import FAMILY_CASES, FAMILY_LORA_LAYERS, TINY, family_bundle_path

pytestmark = pytest.mark.runtime

REL = 1e-5  # parity: max |Δ| over max |reference|


@pytest.fixture(scope="module")
def base(family_bundle) -> torch.nn.Module:
    return load_base_model(read_manifest(family_bundle[1]))


def _assert_rel_close(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert err <= REL * scale, f"max |Δ| {err:.3g} > {REL} × {scale:.3g}"


def _adapter_row(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.05, n).astype(np.float32)


def test_manifest_family_and_layers(family_bundle):
    case, bundle = family_bundle
    m = read_manifest(bundle)
    assert m.model.family == FAMILY_CASES[case][0] and not m.base.random_weights
    assert m.lora.layers == ((0, 1) if FAMILY_LORA_LAYERS[case] == "all" else (1,))


def test_train_program_matches_transformers(family_bundle, base):
    _, bundle = family_bundle
    m = read_manifest(bundle)
    layout = lora_layout_of(m)
    lora_a = load_lora_a(bundle, layout)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, m.model.vocab_size, (2, 16), generator=gen)
    mask = torch.ones(2, 16)
    mask[:, :5] = 0
    for s in (1, 3):
        lora_b = torch.randn(s, layout.num_params, generator=gen) * 0.05
        got = TrainProgram(bundle, slices=s, batch=2).losses(tokens, mask, lora_b)
        _assert_rel_close(got, hf_losses(base, layout, lora_a, tokens, mask, lora_b))


def test_infer_program_matches_transformers(family_bundle, base):
    _, bundle = family_bundle
    layout = lora_layout_of(read_manifest(bundle))
    row = _adapter_row(layout.num_params, 1)
    ref = merged_model(base, layout, load_lora_a(bundle, layout), row)
    ids = list(range(3, 23))  # 20 tokens: a full prefill chunk, a padded one, then decode
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    prog = InferProgram(bundle)
    _assert_rel_close(prog.forward(ids[:19], 0, row), want[18])
    _assert_rel_close(prog.forward(ids[19:], 19, row), want[19])


def test_greedy_tokens_equal_transformers(family_bundle, base):
    _, bundle = family_bundle
    layout = lora_layout_of(read_manifest(bundle))
    row = _adapter_row(layout.num_params, 2)
    prompt = list(b"Hello, how are you?")  # 19 tokens: a full prefill chunk and more
    want = eager_generate(merged_model(base, layout, load_lora_a(bundle, layout), row),
                          prompt, 10)
    prog = InferProgram(bundle)
    got, pos, ids = [], 0, prompt
    for _ in range(len(want)):
        logits = prog.forward(ids, pos, row)
        pos += len(ids)
        ids = [int(np.argmax(logits))]
        got.append(ids[0])
    assert len(want) >= 3 and got == want


def test_served_chat_through_the_runtime(family_bundle, base):
    """The inference service's generator and codec answer a chat on infer.pte, greedily,
    with the tokens transformers would pick."""
    from agent.services.inference.generation import Generator, TextCodec
    from agent.services.inference.sampling import SamplingParams

    _, bundle = family_bundle
    m = read_manifest(bundle)
    layout = lora_layout_of(m)
    row = _adapter_row(layout.num_params, 4)
    codec = TextCodec.from_dir(bundle / m.tokenizer.path)
    prompt = codec.encode_chat([{"role": "user", "content": "Hi!"}])
    budget = min(6, m.infer.max_context - len(prompt) - 1)
    res = Generator(InferProgram(bundle), codec).generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=budget, ignore_eos=True), row)
    want = eager_generate(merged_model(base, layout, load_lora_a(bundle, layout), row),
                          prompt, budget)
    assert res.prompt_tokens == len(prompt) and res.completion_tokens == budget
    assert len(want) >= 1 and res.text.startswith(codec.decode(want))


def test_train_step_through_the_runtime(family_bundle, tmp_path):
    """Two P-RGE steps of the trainer on train.pte (q = 3 slices, b = 2) move the adapter."""
    from agent.core.train_job import TrainJob
    from agent.training.sample_data import constant_response_rows, write_jsonl
    from agent.training.trainer import run_training

    _, bundle = family_bundle
    data = write_jsonl(tmp_path / "data.jsonl", constant_response_rows(16, "ok!"))
    res = run_training(TrainJob(bundle=bundle, data=data, out=tmp_path / "adapter", steps=2,
                                mode="prge", q=3, batch=2, lr=1e-2, eps=1e-2,
                                checkpoint_every=100, evaluate=False))
    assert res.status == "completed" and res.end_step == 2
    b = AdapterValidator(bundle).load_flat_b(res.adapter_dir)
    assert np.isfinite(b).all() and np.abs(b).max() > 0


def test_tied_embedding_is_stored_once_in_the_bundle(bundle_cache_dir):
    """A tied model's bundle is smaller than its untied twin's by one embedding matrix (they
    differ only in tie_word_embeddings and in rope tables of equal size): both programs read
    the frozen weights from weights.ptd, where the tied table is one buffer (infer.pte's
    packed LM head is deduplicated by content); the programs themselves hold no weights."""
    untied = family_bundle_path(bundle_cache_dir, "llama")
    tied = family_bundle_path(bundle_cache_dir, "llama-tied")
    embedding_bytes = TINY["vocab_size"] * TINY["hidden_size"] * 4

    def saved(part: str) -> int:
        return (untied / part).stat().st_size - (tied / part).stat().st_size

    assert 0.9 * embedding_bytes <= saved("weights.ptd") <= 1.1 * embedding_bytes
    assert abs(saved("train.pte")) < 0.1 * embedding_bytes
    assert abs(saved("infer.pte")) < 0.1 * embedding_bytes

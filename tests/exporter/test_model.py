"""The export-friendly decoder (exporter/model.py) equals transformers' model, eagerly.

Fast: no lowering. Each swapped-in piece is checked against transformers' own module, then
the whole train/infer forward against transformers' model with the LoRA merged in.
"""

from __future__ import annotations

import pytest
import torch

from agent.core.lora_layout import CANONICAL_TARGETS, LoraLayout
from exporter.checkpoint import inspect_checkpoint, load_model
from exporter.families import family_for
from exporter.infer_step import InferStep, KVCache
from exporter.lora_init import init_lora_a
from exporter.model import Decoder, RMSNorm, TrainForward, rotate_half_matrix
from exporter.reference import hf_losses, merged_model
from tests.exporter.tiny import FAMILY_CASES, LLAMA3_ROPE, make_tiny_checkpoint

# Every exported test case, plus rope types checked eagerly only
EAGER_CASES = {**{case: (case, {}) for case in FAMILY_CASES},
               "llama-linear-rope": ("llama", dict(rope_scaling={"rope_type": "linear",
                                                                 "factor": 2.0}))}


def _layout(hf, layers, rank=4, alpha=8.0) -> LoraLayout:
    c = hf.config
    hd = c.hidden_size // c.num_attention_heads
    q, kv, h, i = c.num_attention_heads * hd, c.num_key_value_heads * hd, c.hidden_size, \
        c.intermediate_size
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return LoraLayout.build(layer_dims=dims, layers=layers, targets=CANONICAL_TARGETS,
                            rank=rank, alpha=alpha)


def _load(case: str, root) -> torch.nn.Module:
    name, overrides = EAGER_CASES[case]
    return load_model(inspect_checkpoint(make_tiny_checkpoint(name, root / "ckpt",
                                                              **overrides)))


@pytest.fixture(scope="module", params=list(EAGER_CASES))
def hf(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory.mktemp(request.param))


def test_rmsnorm_matches_transformers(hf):
    ref = hf.model.layers[0].input_layernorm
    offset = family_for(hf.config.model_type).norm_offset
    mine = RMSNorm(ref.weight, hf.config.rms_norm_eps, offset)
    x = torch.randn(3, 5, hf.config.hidden_size)
    torch.testing.assert_close(mine(x), ref(x), atol=1e-6, rtol=1e-5)


def test_tied_head_is_the_embedding_parameter(hf):
    core = Decoder(hf, _layout(hf, [1]), init_lora_a(_layout(hf, [1]), 0))
    tied = bool(hf.config.tie_word_embeddings)
    assert core.tied_head is tied and (core.lm_head.weight is core.embed) is tied
    assert core.runtime_weights() == (("embed", "lm_head.weight") if tied else ())


def test_llama3_rope_scaling_changes_the_tables(tmp_path):
    """The llama-tied case's "llama3" scaling really rescales some frequencies (so its parity
    tests check the scaled tables), and transformers agrees on them."""
    plain, scaled = _load("llama", tmp_path / "a"), _load("llama-tied", tmp_path / "b")
    assert scaled.config.rope_parameters["rope_type"] == LLAMA3_ROPE["rope_type"]
    cos_plain, _ = Decoder(plain, _layout(plain, [1]), init_lora_a(_layout(plain, [1]), 0)
                           ).rope_tables(128)["full_attention"]
    cos_scaled, _ = Decoder(scaled, _layout(scaled, [1]), init_lora_a(_layout(scaled, [1]), 0)
                            ).rope_tables(128)["full_attention"]
    assert (cos_plain - cos_scaled).abs().max() > 0.1


def test_qwen2_biases_change_the_losses(tmp_path):
    """The qwen2 parity tests are sensitive to the q/k/v biases: without them the decoder
    disagrees with transformers."""
    hf = _load("qwen2", tmp_path)
    assert all(float(lyr.self_attn.q_proj.bias.detach().abs().max()) > 0 for lyr in hf.model.layers)
    layout = _layout(hf, [0, 1])
    lora_a = init_lora_a(layout, 0)
    tokens = torch.randint(0, hf.config.vocab_size, (2, 10))
    mask, lora_b = torch.ones(2, 10), torch.randn(1, layout.num_params) * 0.1
    want = hf_losses(hf, layout, lora_a, tokens, mask, lora_b)
    core = Decoder(hf, layout, lora_a)
    with torch.no_grad():
        got = TrainForward(core, slices=1, batch=2, max_length=10)(tokens, mask, lora_b)
        for blk in core.blocks:
            for lin in (blk.q_proj, blk.k_proj, blk.v_proj):
                lin.base.bias.zero_()
        unbiased = TrainForward(core, slices=1, batch=2, max_length=10)(tokens, mask, lora_b)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (unbiased - want).abs().max() > 1e-3


def test_rotate_half_matrix_matches_transformers():
    from transformers.models.llama.modeling_llama import rotate_half

    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(x @ rotate_half_matrix(16), rotate_half(x))


@pytest.mark.parametrize("layers", [[0, 1], [1]], ids=["all", "last-1"])
def test_train_forward_matches_transformers(hf, layers):
    layout = _layout(hf, layers)
    lora_a = init_lora_a(layout, 0)
    s, b, t = 3, 2, 12
    fwd = TrainForward(Decoder(hf, layout, lora_a), slices=s, batch=b, max_length=t,
                       loss_chunk=5)
    tokens = torch.randint(0, hf.config.vocab_size, (b, t))
    mask = torch.ones(b, t)
    mask[:, :3] = 0
    mask[1, 9:] = 0
    lora_b = torch.randn(s, layout.num_params) * 0.1
    with torch.no_grad():
        got = fwd(tokens, mask, lora_b)
    want = hf_losses(hf, layout, lora_a, tokens, mask, lora_b)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_last_k_equals_all_layer_math_restricted(hf):
    """LoRA on the last layer only == all-layer LoRA with B zero outside that layer."""
    last, full = _layout(hf, [1]), _layout(hf, [0, 1])
    a_full = init_lora_a(full, 0)
    a_last = {e.peft_a_key: a_full[e.peft_a_key] for e in last}
    s, b, t = 2, 2, 10
    tokens = torch.randint(0, hf.config.vocab_size, (b, t))
    mask = torch.ones(b, t)
    b_last = torch.randn(s, last.num_params) * 0.1
    b_full = torch.zeros(s, full.num_params)
    for e in last:
        f = next(x for x in full if (x.layer, x.target) == (e.layer, e.target))
        b_full[:, f.offset : f.offset + f.size] = b_last[:, e.offset : e.offset + e.size]
    with torch.no_grad():
        got = TrainForward(Decoder(hf, last, a_last), slices=s, batch=b, max_length=t)(
            tokens, mask, b_last)
        want = TrainForward(Decoder(hf, full, a_full), slices=s, batch=b, max_length=t)(
            tokens, mask, b_full)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("llm_ops", [True, False], ids=["llm-ops", "masked"])
def test_infer_step_matches_transformers_with_cache(hf, llm_ops):
    """Both attention forms (the LLM ops, and the masked matmul for ARMv8.0 boards)."""
    layout = _layout(hf, [0, 1])
    lora_a = init_lora_a(layout, 1)
    core = Decoder(hf, layout, lora_a)
    c = hf.config
    cache = KVCache(c.num_hidden_layers, 32, c.num_key_value_heads,
                    c.hidden_size // c.num_attention_heads)
    prefill = InferStep(core, cache, chunk=8, max_context=32, llm_ops=llm_ops)
    decode = InferStep(core, cache, chunk=1, max_context=32, llm_ops=llm_ops)
    row = torch.randn(1, layout.num_params) * 0.1
    ids = torch.randint(0, c.vocab_size, (1, 13))
    with torch.no_grad():
        want = merged_model(hf, layout, lora_a, row[0])(ids).logits[0]
        got5 = prefill(ids[:, :8], torch.tensor([0]), torch.tensor([5]), row)  # padding-free
        got7 = prefill(ids[:, :8], torch.tensor([0]), torch.tensor([7]), row)
        got8 = decode(ids[:, 8:9], torch.tensor([8]), torch.tensor([0]), row)
        pad = torch.zeros(1, 8, dtype=torch.long)
        pad[0, :4] = ids[0, 9:13]
        got12 = prefill(pad, torch.tensor([9]), torch.tensor([3]), row)
    for got, pos in ((got5, 5), (got7, 7), (got8, 8), (got12, 12)):
        torch.testing.assert_close(got[0], want[pos], atol=1e-4, rtol=1e-4)



def test_infer_step_reads_only_the_positions_written(hf):
    """Causal layers attend through llama::custom_sdpa up to the query's own position: cache
    entries past it (NaN here: stale values of an earlier, longer conversation) are never
    read, so they cannot leak into the logits, and the work grows with the context filled."""
    core = Decoder(hf, _layout(hf, [0, 1]), init_lora_a(_layout(hf, [0, 1]), 2))
    if any(blk.sliding for blk in core.blocks):
        pytest.skip("a sliding-window layer scores its whole cache under its mask")
    c = hf.config
    hd = c.hidden_size // c.num_attention_heads
    clean = KVCache(c.num_hidden_layers, 32, c.num_key_value_heads, hd)
    stale = KVCache(c.num_hidden_layers, 32, c.num_key_value_heads, hd)
    for buf in stale.buffers():
        buf.fill_(float("nan"))
    row = torch.randn(1, _layout(hf, [0, 1]).num_params) * 0.1
    ids = torch.randint(0, c.vocab_size, (1, 9))
    out = []
    with torch.no_grad():
        for cache in (clean, stale):
            prefill = InferStep(core, cache, chunk=8, max_context=32)
            decode = InferStep(core, cache, chunk=1, max_context=32)
            prefill(ids[:, :8], torch.tensor([0]), torch.tensor([7]), row)
            out.append(decode(ids[:, 8:9], torch.tensor([8]), torch.tensor([0]), row))
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)


def test_infer_step_refuses_a_chunk_past_the_context(hf):
    core = Decoder(hf, _layout(hf, [1]), init_lora_a(_layout(hf, [1]), 0))
    c = hf.config
    cache = KVCache(c.num_hidden_layers, 16, c.num_key_value_heads,
                    c.hidden_size // c.num_attention_heads)
    prefill = InferStep(core, cache, chunk=8, max_context=16)
    row = torch.zeros(1, _layout(hf, [1]).num_params)
    with torch.no_grad(), pytest.raises(RuntimeError):
        prefill(torch.zeros(1, 8, dtype=torch.long), torch.tensor([9]), torch.tensor([0]), row)


def test_a_narrow_target_window_gives_the_same_losses_when_targets_fit(hf):
    """The head sees only K positions; with all targets inside them nothing changes."""
    layout = _layout(hf, [0, 1])
    lora_a = init_lora_a(layout, 0)
    s, b, t = 2, 2, 12
    core = Decoder(hf, layout, lora_a)
    tokens = torch.randint(0, hf.config.vocab_size, (b, t))
    mask = torch.zeros(b, t)
    mask[0, 8:] = 1
    mask[1, 5:9] = 1
    lora_b = torch.randn(s, layout.num_params) * 0.05
    full = TrainForward(core, slices=s, batch=b, max_length=t)(tokens, mask, lora_b)
    narrow = TrainForward(core, slices=s, batch=b, max_length=t, max_targets=4,
                          loss_chunk=3)(tokens, mask, lora_b)
    torch.testing.assert_close(narrow, full, rtol=1e-5, atol=1e-5)
    want = hf_losses(hf, layout, lora_a, tokens, mask, lora_b)
    torch.testing.assert_close(narrow, want, rtol=1e-4, atol=1e-4)

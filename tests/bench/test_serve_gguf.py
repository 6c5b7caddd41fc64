"""The GGUF writer of ``mobizo-bench serve --vs-llamacpp``: a tiny Llama checkpoint and a PEFT
adapter written as GGUF and read back with the ``gguf`` package's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.bench import gguf_writer
from agent.errors import ExportError

gguf = pytest.importorskip("gguf", reason="pip install gguf (in the dev extra)")

TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
VOCAB = 300  # the byte tokenizer's 259 tokens, padded like the 110M shape pads to 32000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporter.starter import byte_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, **TINY))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _field(reader: object, key: str) -> object:
    return reader.fields[key].contents()  # type: ignore[attr-defined]


def test_rope_permute_pairs_each_heads_halves() -> None:
    # HF rotate-half pairs row i with i + d/2; GGML pairs adjacent rows
    rows = np.arange(8).reshape(8, 1)
    assert gguf_writer.rope_permute(rows, heads=2).ravel().tolist() == [0, 2, 1, 3,
                                                                        4, 6, 5, 7]


def test_hf_names_map_to_gguf_names() -> None:
    assert gguf_writer.gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_writer.gguf_name("model.layers.3.self_attn.o_proj.weight") == \
        "blk.3.attn_output.weight"
    assert gguf_writer.gguf_name("model.layers.0.post_attention_layernorm.weight") == \
        "blk.0.ffn_norm.weight"
    assert gguf_writer.gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_model_round_trips_through_the_gguf_reader(tiny_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    out = gguf_writer.write_model(tiny_checkpoint, tmp_path / "tiny.gguf")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in (
            "attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
            "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == names
    # GGUF lists dimensions innermost first: a [out, in] matrix reads back as (in, out)
    assert tuple(tensors["token_embd.weight"].shape) == (16, VOCAB)
    assert tuple(tensors["blk.0.attn_k.weight"].shape) == (16, 8)  # 2 kv heads x head_dim 4
    assert tuple(tensors["blk.1.ffn_down.weight"].shape) == (32, 16)
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 4
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[10] == "<0x0A>" and tokens[257] == "<s>"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 257
    # the weights themselves: v as is, q with its rows in GGML's RoPE order
    hf = load_file(str(tiny_checkpoint / "model.safetensors"))
    v = hf["model.layers.1.self_attn.v_proj.weight"]
    q = hf["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_v.weight"].data), v)
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_q.weight"].data),
                                  gguf_writer.rope_permute(q, 4))


def test_lora_adapter_round_trips(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from agent.core.lora_layout import LoraLayout
    from agent.io.adapter_fs import write_adapter

    dims = {"q_proj": (16, 16), "k_proj": (16, 8), "v_proj": (16, 8), "o_proj": (16, 16),
            "gate_proj": (16, 32), "up_proj": (16, 32), "down_proj": (32, 16)}
    layout = LoraLayout.build(layer_dims=dims, layers=[1], targets=["q_proj", "down_proj"],
                              rank=2, alpha=4.0)
    rng = np.random.default_rng(0)
    a = {e.peft_a_key: rng.standard_normal((e.rank, e.in_features)).astype(np.float32)
         for e in layout}
    write_adapter(tmp_path / "adapter", layout,
                  rng.standard_normal(layout.num_params).astype(np.float32), a)
    shape = gguf_writer.read_shape(tiny_checkpoint)
    out = gguf_writer.write_lora(tmp_path / "adapter", shape, tmp_path / "lora.gguf")
    reader = gguf.GGUFReader(out)
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes == {"blk.1.attn_q.weight.lora_a": (16, 2), "blk.1.attn_q.weight.lora_b": (2, 16),
                      "blk.1.ffn_down.weight.lora_a": (32, 2),
                      "blk.1.ffn_down.weight.lora_b": (2, 16)}
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    assert _field(reader, "adapter.lora.alpha") == pytest.approx(4.0)


def test_a_tokenizer_that_is_not_byte_level_is_refused(tiny_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    first = next(k for k, v in vocab.items() if v == 0)
    vocab["zz"], vocab[first] = 0, len(vocab)  # id 0 is no longer byte 0
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="maps byte-level tokenizers only"):
        gguf_writer.write_model(ckpt, tmp_path / "x.gguf")


def test_another_family_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        gguf_writer.read_shape(tmp_path)

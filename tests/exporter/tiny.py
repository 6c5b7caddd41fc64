"""Tiny save_pretrained checkpoints of every supported family (no download)."""

from __future__ import annotations

from pathlib import Path

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, vocab_size=272,
            tie_word_embeddings=False)


def make_tiny_checkpoint(family: str, out: Path, *, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from exporter.starter import byte_tokenizer

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                          "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    cfg = cfg_cls(**{**TINY, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
        # random biases (qwen2 q/k/v) so a bias bug cannot hide behind zeros
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.data.normal_(0, 0.1)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out

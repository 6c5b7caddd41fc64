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


FAMILY_LORA_LAYERS = {"llama": "all", "qwen2": "last-1"}
FAMILY_OPTIONS = dict(slices=(1, 3), batch=(2,), max_length=16, max_context=32, prefill_chunk=8)


def family_bundle_path(cache_dir: Path, family: str) -> Path:
    """Export (once, cached) the tiny bundle of ``family`` used by tests/exporter/test_families."""
    import hashlib

    from tests.conftest import cached_bundle

    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    ckpt = cache_dir / f"ckpt-{family}-{recipe}"
    if not (ckpt / "config.json").is_file():
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        make_tiny_checkpoint(family, tmp)
        tmp.rename(ckpt)
    opts = dict(FAMILY_OPTIONS, lora_layers=FAMILY_LORA_LAYERS[family])
    return cached_bundle(cache_dir, f"tiny-{family}", opts, checkpoint=ckpt)

"""Tiny save_pretrained checkpoints of every supported family (no download).

``FAMILY_CASES`` is the table of exported test bundles (tests/exporter/test_families.py): one
per family row of exporter/families.py, plus a tied-embedding Llama with Llama 3.x rope
scaling. Every checkpoint is built by transformers' own model class from a tiny config, with
random biases and norm weights so that a bias, (1 + w) or q/k-norm bug cannot hide behind
zeros and ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, vocab_size=272,
            tie_word_embeddings=False)

# Llama 3.1/3.2's rope scaling, with an original context the tiny test lengths exceed (so
# several frequencies are really rescaled)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# Per-family extras: head_dim is explicit where the config's default is not hidden/heads
FAMILY_CONFIG: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    # one local layer (window 4 < the test length 16) then one global layer, local rope base
    # 10k vs global 1M; query_pre_attn_scalar != head_dim; soft-capped logits
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention"],
                        final_logit_softcapping=0.5),
}

# test case -> (family, config overrides, --lora-layers): one exported bundle each
FAMILY_CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "llama": ("llama", {}, "all"),
    # Llama-3.2-1B's kind of config: tied embeddings and "llama3" rope scaling
    "llama-tied": ("llama", dict(tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE), "all"),
    "qwen2": ("qwen2", {}, "last-1"),  # random q/k/v biases; prefix sharing
    "qwen3": ("qwen3", dict(tie_word_embeddings=True), "last-1"),
    "gemma3_text": ("gemma3_text", dict(tie_word_embeddings=True), "all"),
}


def _classes(family: str) -> tuple[Any, Any]:
    import transformers as tf

    return {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
            "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
            "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM)}[family]


def make_tiny_checkpoint(family: str, out: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """A tiny random checkpoint of ``family`` (or of a ``FAMILY_CASES`` name) at ``out``."""
    import torch

    from exporter.starter import byte_tokenizer

    if family in FAMILY_CASES:
        family, case_overrides, _ = FAMILY_CASES[family]
        overrides = {**case_overrides, **overrides}
    cfg_cls, model_cls = _classes(family)
    cfg = cfg_cls(**{**TINY, **FAMILY_CONFIG[family], **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # qwen2 q/k/v: random, not zero
                p.data.normal_(0, 0.1)
            elif "norm" in name:  # llama's ones, gemma's (1 + 0): perturbed
                p.data.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


FAMILY_LORA_LAYERS = {case: layers for case, (_, _, layers) in FAMILY_CASES.items()}
FAMILY_OPTIONS = dict(slices=(1, 3), batch=(2,), max_length=16, max_context=32, prefill_chunk=8)


def family_bundle_path(cache_dir: Path, case: str) -> Path:
    """Export (once, cached) the tiny bundle of ``case`` (a ``FAMILY_CASES`` name)."""
    import hashlib

    from tests.conftest import cached_bundle

    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    ckpt = cache_dir / f"ckpt-{case}-{recipe}"
    if not (ckpt / "config.json").is_file():
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        make_tiny_checkpoint(case, tmp)
        tmp.rename(ckpt)
    opts = dict(FAMILY_OPTIONS, lora_layers=FAMILY_LORA_LAYERS[case])
    return cached_bundle(cache_dir, f"tiny-{case}", opts, checkpoint=ckpt)

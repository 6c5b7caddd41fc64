"""Tiny bundles of real families with real tokenizers (tests/real_tokenizers.py), cached.

Random weights saved with transformers' own classes, with the real vocabulary size (hidden
size 16 so the export stays quick), the real tokenizer files and chat template, and the model
card's generation_config.json. Exported once per exporter source, like the starter bundle
(tests/conftest.py exports them before the tests start).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.real_tokenizers import real_tokenizer_dir

_TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256)
# case: (transformers class names, config, tokenizer, its model card's stop ids and sampling)
CASES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        _TINY, vocab_size=128256, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=[128001, 128009]), "llama3", (128001, 128009), (0.6, 0.9)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        _TINY, head_dim=8, vocab_size=151936, tie_word_embeddings=True,
        eos_token_id=[151645, 151643]), "qwen3", (151645, 151643), (0.6, 0.95)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        _TINY, head_dim=8, vocab_size=262144, tie_word_embeddings=True, bos_token_id=2,
        eos_token_id=[1, 106], pad_token_id=0), "gemma3", (1, 106), (1.0, 0.95)),
}
OPTIONS = dict(slices=(1,), batch=(2,), max_length=64, max_context=128, prefill_chunk=16,
               lora_layers="all", rank=4, seed=0)


def _checkpoint(cache_dir: Path, case: str, tokenizer_dir: Path) -> Path:
    """The tiny checkpoint of ``case`` (saved with transformers' own classes), cached."""
    import torch
    import transformers

    cfg_name, model_name, config = CASES[case][:3]
    recipe = hashlib.sha256(json.dumps(CASES[case][:3], sort_keys=True).encode()
                            + (tokenizer_dir / "generation_config.json").read_bytes()
                            ).hexdigest()[:12]
    ckpt = cache_dir / f"ckpt-{case}-real-{recipe}"
    if not (ckpt / "config.json").is_file():
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cfg = getattr(transformers, cfg_name)(**config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            getattr(transformers, model_name)(cfg).save_pretrained(tmp)
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(tokenizer_dir / f, tmp / f)  # the model card's, over transformers'
        tmp.rename(ckpt)
    return ckpt


def real_bundle_path(cache_dir: Path, case: str) -> Path:
    """The bundle of ``case`` (a ``CASES`` name), exported once into ``cache_dir``.

    Skips the calling test when the real tokenizer cannot be fetched (no npm or registry).
    """
    from tests.conftest import cached_bundle

    tokenizer_dir = real_tokenizer_dir(CASES[case][3], cache_dir.parent / "mobizo-tokenizers")
    ckpt = _checkpoint(cache_dir, case, tokenizer_dir)
    return cached_bundle(cache_dir, f"{case}-real", OPTIONS, checkpoint=ckpt)

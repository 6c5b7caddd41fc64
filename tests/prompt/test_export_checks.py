"""Bad tokenizers are refused at export, saying what was wrong and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ExportError
from exporter.checkpoint import Checkpoint, load_tokenizer
from exporter.families import family_for
from exporter.starter import byte_tokenizer


def _checkpoint(tmp_path: Path, **config_changes: Any) -> Checkpoint:
    byte_tokenizer().save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    template = config_changes.pop("chat_template", None)
    jinja = tmp_path / "chat_template.jinja"  # where transformers 5 saves the template
    if template is not None:
        config["chat_template"] = template
        jinja.unlink(missing_ok=True)
    config.update(config_changes)
    path.write_text(json.dumps(config))
    return Checkpoint(tmp_path, family_for("llama"), {}, ())


def test_the_starter_tokenizer_passes(tmp_path: Path) -> None:
    assert load_tokenizer(_checkpoint(tmp_path), 300).eos_token_id is not None


def test_a_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no eos_token.*tokenizer_config.json"):
        load_tokenizer(_checkpoint(tmp_path, eos_token=None), 300)


def test_a_chat_template_that_raises_is_refused(tmp_path: Path) -> None:
    template = "{{ raise_exception('this template needs a system message first') }}"
    with pytest.raises(ExportError, match="chat template.*needs a system message.*fix"):
        load_tokenizer(_checkpoint(tmp_path, chat_template=template), 300)


def test_real_tokenizers_pass_the_export_check(real_tokenizer_path: Path,
                                               real_tokenizer_name: str) -> None:
    vocab = {"qwen3": 151936, "llama3": 128256, "gemma3": 262144}[real_tokenizer_name]
    ckpt = Checkpoint(real_tokenizer_path, family_for("llama"), {}, ())
    assert load_tokenizer(ckpt, vocab).eos_token_id is not None  # Gemma's extra image token ok
    with pytest.raises(ExportError, match="belongs to another model"):
        load_tokenizer(ckpt, 1000)


def test_export_writes_nothing_for_a_tokenizer_without_eos(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    ckpt = _checkpoint(tmp_path / "ckpt", eos_token=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=300, max_position_embeddings=64)
        ).save_pretrained(ckpt.path)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="no eos_token"):
        export_bundle(ckpt.path, out, ExportOptions(max_length=16, max_context=32,
                                                    prefill_chunk=8, slices=(1,)))
    assert not out.exists() and not list(tmp_path.glob(".mobizo-export-*"))

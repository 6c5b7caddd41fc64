"""Fixtures for the trainer tests: a tiny byte-level tokenizer made here (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_byte_tokenizer(out_dir: Path, chat_template: str | None = None):
    """A byte-level BPE with no merges: one token per byte, plus <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
    return make_byte_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    return make_byte_tokenizer(tmp_path_factory.mktemp("chat_tok"), CHAT_TEMPLATE)

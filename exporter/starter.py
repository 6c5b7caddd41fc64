"""The starter preset: a small Llama-architecture checkpoint made here, no download.

Random (seeded) weights and a byte-level tokenizer: 256 byte tokens + pad/bos/eos, so any
UTF-8 text round-trips. Good for tests and the out-of-the-box run; it cannot speak, and the
bundle's manifest says so (``base.random_weights``).
"""

from __future__ import annotations

from pathlib import Path

from agent.core.byte_level import byte_of_char

STARTER_NAME = "starter"
# Small enough that exporting takes seconds and a ZO step milliseconds on 2 cores.
STARTER_CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level tokenizer: ids 0..255 are bytes (GPT-2 byte alphabet), then pad, bos, eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=byte_of_char().__getitem__)
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for tok in (PAD, BOS, EOS):
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
    )
    fast.add_special_tokens({"pad_token": PAD, "bos_token": BOS, "eos_token": EOS})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_starter_checkpoint(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the starter checkpoint (config, safetensors, tokenizer) into ``out_dir``.

    Deterministic for a given seed and torch version, so the eager reference can rebuild it.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **STARTER_CONFIG,
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir

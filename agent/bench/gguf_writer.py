"""The same weights as GGUF, for llama.cpp: a Llama checkpoint, its quantizations, a LoRA.

``mobizo-bench serve --vs-llamacpp`` runs llama.cpp on exactly the weights the bundle was
exported from. This is the short Llama-shape writer the ``gguf`` package makes possible, with
what llama.cpp's ``convert_hf_to_gguf.py`` / ``convert_lora_to_gguf.py`` do for Llama:

- tensor names ``token_embd``, ``blk.N.attn_q`` ... (gguf ``MODEL_TENSOR`` names);
- q_proj / k_proj rows permuted from Hugging Face's rotate-half RoPE layout to GGML's
  (``LlamaModel.permute`` in convert_hf_to_gguf.py), and the LoRA-B rows of q / k the same
  way (B's rows are the projection's output rows; A is untouched);
- a LoRA adapter is ``general.type = adapter``, ``adapter.type = lora``,
  ``adapter.lora.alpha``, tensors ``<base name>.lora_a`` [r, in] and ``.lora_b`` [out, r]
  (PEFT's own shapes); llama.cpp scales by alpha / r like PEFT.

The vocabulary: the benchmarks' models use the starter's byte-level tokenizer (ids 0..255 are
the bytes, then a few specials; the 110M shape pads the vocabulary to 32000). It is written as
a SentencePiece-style vocabulary of byte tokens ``<0xNN>`` with the same ids, so llama.cpp
decodes the same bytes; other tokenizers are refused (use llama.cpp's converter for them).
Benchmarks feed token ids to both engines, so the tokenizers' merge rules never matter.

Quantized files (q8_0, q4_0) are made from the f32 file by llama.cpp itself
(``llama_model_quantize``), as ``llama-quantize`` would.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.byte_level import byte_of_char
from agent.errors import ExportError

INSTALL_GGUF = ".venv/bin/python -m pip install gguf  (or: pip install -e '.[llamacpp]')"
# llama.cpp's LLAMA_FTYPE_* of the files this module writes or asks llama.cpp to make
FTYPES = {"f32": 0, "q4_0": 2, "q8_0": 7}
# Hugging Face Llama module names -> GGUF tensor names (gguf.constants.TENSOR_NAMES)
_BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
              "lm_head": "output"}


@dataclass(frozen=True)
class LlamaShape:
    """What llama.cpp needs to know of a Llama checkpoint's ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: Path) -> LlamaShape:
        """Read a transformers ``LlamaConfig`` dict; refuse what this writer does not map."""
        if config.get("model_type") != "llama":
            raise ExportError(f"{where}: model_type {config.get('model_type')!r} is not "
                              "'llama'; this writer maps the Llama shape only, use llama.cpp's "
                              "convert_hf_to_gguf.py for other families")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise ExportError(f"{where}: rope_type {rope.get('rope_type')!r} is not mapped; "
                              "use llama.cpp's convert_hf_to_gguf.py")
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ExportError(f"writing GGUF needs the 'gguf' package; install it: "
                          f"{INSTALL_GGUF}") from exc
    return gguf


def read_shape(checkpoint: Path) -> LlamaShape:
    """The :class:`LlamaShape` of a Hugging Face checkpoint directory."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise ExportError(f"{checkpoint} has no config.json; give a Hugging Face checkpoint "
                          "directory")
    return LlamaShape.from_config(json.loads(path.read_text()), path)


def rope_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a projection's output rows from HF's rotate-half RoPE pairs to GGML's
    adjacent pairs (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    out = rows.shape[0]
    return (rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name of a HF Llama parameter (``.weight`` kept); None: not written."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        mapped = _BLOCK_NAMES.get(".".join(parts[3:]))
        if mapped is not None:
            return f"blk.{parts[2]}.{mapped}.{suffix}"
    return None


def _checkpoint_tensors(checkpoint: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of a checkpoint's safetensors files, as float32 numpy arrays."""
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise ExportError(f"{checkpoint} has no *.safetensors weights")
    for f in files:
        for name, t in load_file(str(f)).items():
            yield name, t.to(torch.float32).numpy()


def byte_vocab(checkpoint: Path, vocab_size: int) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens, token types and special ids of a byte-level tokenizer, padded to the model.

    Raises:
        ExportError: the tokenizer is not byte-level with ids 0..255 = the bytes.
    """
    from tokenizers import Tokenizer

    path = Path(checkpoint) / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{checkpoint} has no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    to_byte = byte_of_char()
    tokens, types = [], []
    for i in range(256):
        piece = tok.id_to_token(i)
        if piece is None or to_byte.get(piece) != i:
            raise ExportError(f"{path}: token {i} is {piece!r}, not byte {i}; this writer "
                              "maps byte-level tokenizers only, use llama.cpp's "
                              "convert_hf_to_gguf.py for this checkpoint")
        tokens.append(f"<0x{i:02X}>")
        types.append(6)  # gguf.TokenType.BYTE
    for i in range(256, vocab_size):
        piece = tok.id_to_token(i)
        tokens.append(piece if piece is not None else f"[PAD{i}]")
        types.append(3 if piece is not None else 5)  # CONTROL, UNUSED
    config = json.loads((Path(checkpoint) / "tokenizer_config.json").read_text()) \
        if (Path(checkpoint) / "tokenizer_config.json").is_file() else {}
    specials = {}
    for role in ("bos", "eos", "pad"):
        name = config.get(f"{role}_token")
        tid = tok.token_to_id(name) if isinstance(name, str) else None
        if tid is not None:
            specials[role] = tid
    return tokens, types, specials


def write_model(checkpoint: Path, out: Path, *, name: str = "mobizo-bench") -> Path:
    """Write a Llama checkpoint as an f32 GGUF file at ``out`` (via ``out``.tmp, renamed)."""
    gguf = _gguf()
    shape = read_shape(checkpoint)
    tokens, types, specials = byte_vocab(checkpoint, shape.vocab_size)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_file_type(FTYPES["f32"])
    w.add_context_length(shape.max_position_embeddings)
    w.add_embedding_length(shape.hidden_size)
    w.add_block_count(shape.num_layers)
    w.add_feed_forward_length(shape.intermediate_size)
    w.add_head_count(shape.num_heads)
    w.add_head_count_kv(shape.num_kv_heads)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_norm_eps)
    w.add_vocab_size(shape.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    for role, tid in specials.items():
        getattr(w, f"add_{role}_token_id")(tid)
    w.add_add_bos_token(False)  # the benchmark feeds token ids; nothing is added
    for hf_name, arr in _checkpoint_tensors(checkpoint):
        target = gguf_name(hf_name)
        if target is None:
            continue
        if target.endswith("attn_q.weight"):
            arr = rope_permute(arr, shape.num_heads)
        elif target.endswith("attn_k.weight"):
            arr = rope_permute(arr, shape.num_kv_heads)
        w.add_tensor(target, np.ascontiguousarray(arr, dtype=np.float32))
    _finish(w, tmp, out)
    return Path(out)


def write_lora(adapter_dir: Path, shape: LlamaShape, out: Path) -> Path:
    """Write a PEFT LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``)
    of a Llama checkpoint of ``shape`` as a GGUF LoRA adapter at ``out``."""
    from safetensors.numpy import load_file

    gguf = _gguf()
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    prefix = "base_model.model."
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(prefix):-len(".lora_A.weight")]
        target = gguf_name(module + ".weight")
        b_key = f"{prefix}{module}.lora_B.weight"
        if target is None or b_key not in tensors:
            raise ExportError(f"{adapter_dir}: {key} is not a LoRA of a Llama linear with "
                              "its lora_B beside it")
        b = tensors[b_key].astype(np.float32)
        if target.endswith("attn_q.weight"):
            b = rope_permute(b, shape.num_heads)
        elif target.endswith("attn_k.weight"):
            b = rope_permute(b, shape.num_kv_heads)
        w.add_tensor(f"{target}.lora_a", np.ascontiguousarray(tensors[key], dtype=np.float32))
        w.add_tensor(f"{target}.lora_b", np.ascontiguousarray(b))
    _finish(w, tmp, out)
    return Path(out)


def _finish(w: Any, tmp: Path, out: Path) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 (where C libraries log) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quantize(f32_path: Path, out: Path, kind: str, threads: int = 2) -> Path:
    """Quantize an f32 GGUF file to ``kind`` (q8_0, q4_0) with llama.cpp's own quantizer."""
    from agent.bench.llamacpp import llama_cpp_module

    if kind not in FTYPES or kind == "f32":
        raise ValueError(f"unknown GGUF type {kind!r}; choose q8_0 or q4_0")
    lc = llama_cpp_module()
    params = lc.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    with _quiet_stderr():  # llama.cpp logs every tensor it converts
        rc = lc.llama_model_quantize(str(f32_path).encode(), str(tmp).encode(),
                                     ctypes.byref(params))
    if rc != 0:
        raise ExportError(f"llama.cpp could not quantize {f32_path} to {kind} (code {rc})")
    tmp.rename(out)
    return Path(out)

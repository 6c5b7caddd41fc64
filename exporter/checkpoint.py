"""Reading and checking a Hugging Face checkpoint directory before anything is exported.

Besides config and weights: the tokenizer (its size against the embedding, an EOS, a chat
template that renders; agent/core/prompt_format.py is the check the service and the trainer
rely on) and ``generation_config.json`` (every end-of-turn id and the sampling defaults, into
the manifest's ``generation``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.bundle import GENERATION_CONFIG, GenerationSpec
from agent.core.prompt_format import PromptError, PromptFormat
from agent.errors import ExportError
from exporter.families import Family, family_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_HF_TOP_K = 50  # transformers' GenerationConfig default when sampling


@dataclass
class Checkpoint:
    """A validated checkpoint directory and what was read from it."""

    path: Path
    family: Family
    config: dict[str, Any]
    weight_files: tuple[Path, ...]

    def sha256(self) -> str:
        """One hash over every weight file, in name order (the base identity of a bundle)."""
        h = hashlib.sha256()
        for f in self.weight_files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()


def inspect_checkpoint(path: Path) -> Checkpoint:
    """Check that ``path`` holds config, weights and tokenizer of a supported family."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a directory; give a local Hugging Face checkpoint "
                          "directory (config.json, *.safetensors, tokenizer files) or "
                          "--preset starter")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no config.json; download the full checkpoint "
                          "(config.json, *.safetensors, tokenizer files) into it")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{cfg_path} is not valid JSON ({exc}); re-download it") from exc
    family = family_for(str(config.get("model_type")))
    weights = tuple(sorted(path.glob("*.safetensors")))
    if not weights:
        extra = " (found only .bin files: convert them to safetensors)" if any(
            path.glob("*.bin")) else ""
        raise ExportError(f"{path} has no *.safetensors weight files{extra}; "
                          "download the checkpoint's safetensors files into it")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ExportError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                          "copy the tokenizer files of this checkpoint into it")
    return Checkpoint(path, family, config, weights)


def load_model(ckpt: Checkpoint):  # -> transformers PreTrainedModel
    """transformers' own model class for the checkpoint, float32, eval mode, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ckpt.path, dtype=torch.float32, attn_implementation="eager"
        )
    except Exception as exc:  # transformers raises many types; name the file and the fix
        raise ExportError(f"transformers could not load {ckpt.path}: {exc}; check that the "
                          "weights and config.json belong together") from exc
    return model.eval()


def load_tokenizer(ckpt: Checkpoint, vocab_size: int):  # -> PreTrainedTokenizerBase
    """The checkpoint's tokenizer, checked against the model's embedding size."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ckpt.path)
    except Exception as exc:
        raise ExportError(f"the tokenizer in {ckpt.path} cannot be loaded ({exc}); "
                          "copy the checkpoint's tokenizer files again") from exc
    # Added tokens may lie past the embedding (Gemma 3's image token, 262144 of 262144): text
    # never produces them. The base vocabulary and the control tokens must fit.
    base = int(getattr(tok, "vocab_size", len(tok)))
    if base > vocab_size:
        raise ExportError(
            f"the tokenizer in {ckpt.path} has {base} tokens but the model embeds only "
            f"{vocab_size}; the tokenizer belongs to another model: use this checkpoint's own"
        )
    _check_prompt_format(ckpt.path, tok, vocab_size)
    return tok


def _check_prompt_format(path: Path, tok: Any, vocab_size: int) -> None:
    """Refuse a tokenizer the service and the trainer could not format prompts with."""
    try:
        fmt = PromptFormat(tok)
        fmt.check()
    except PromptError as exc:
        if exc.field == "eos_token":
            raise ExportError(f"the tokenizer in {path}: {exc}") from exc
        raise ExportError(
            f"the chat template in {path / 'tokenizer_config.json'} fails on a one-message "
            f"conversation ({exc}); fix its \"chat_template\" or copy the checkpoint's own "
            "tokenizer_config.json again") from exc
    control = {"bos_token": tok.bos_token_id, "eos_token": tok.eos_token_id,
               "pad_token": tok.pad_token_id, "end-of-turn token": fmt.end_of_turn_id}
    for name, token_id in control.items():
        if token_id is not None and not 0 <= int(token_id) < vocab_size:
            raise ExportError(f"the tokenizer in {path} has {name} id {token_id}, outside the "
                              f"model's {vocab_size} embeddings; use this checkpoint's own "
                              "tokenizer")


def load_generation_config(ckpt: Checkpoint, vocab_size: int) -> GenerationSpec:
    """The stop ids and sampling defaults of ``generation_config.json`` (absent: none).

    Read as transformers' ``generate`` reads it: ``do_sample: false`` is greedy (temperature
    0); with ``do_sample: true`` a field left out takes transformers' default (temperature 1,
    top_p 1, top_k 50).
    """
    path = ckpt.path / GENERATION_CONFIG
    if not path.is_file():
        return GenerationSpec()
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}); copy the checkpoint's "
                          f"{GENERATION_CONFIG} again or remove it") from exc
    if not isinstance(raw, dict):
        raise ExportError(f"{path} must hold a JSON object; copy the checkpoint's own")
    eos = raw.get("eos_token_id")
    eos_ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and 0 <= i < vocab_size for i in eos_ids):
        raise ExportError(f"{path}: eos_token_id {eos!r} must be token ids below the model's "
                          f"{vocab_size}; copy the checkpoint's own {GENERATION_CONFIG}")
    sample = raw.get("do_sample")
    try:
        return GenerationSpec(
            eos_token_ids=tuple(eos_ids),
            # do_sample false: greedy; absent (a file transformers wrote from config.json):
            # it says nothing about sampling, so the service's own defaults stay
            temperature=raw.get("temperature", 1.0) if sample else 0.0 if sample is False
            else None,
            top_p=raw.get("top_p", 1.0) if sample else None,
            top_k=raw.get("top_k", _HF_TOP_K) if sample else None,
        )
    except ValueError as exc:  # pydantic's ValidationError: a value out of its bounds
        raise ExportError(f"{path} has a sampling setting out of range ({exc}); fix it or "
                          "remove the field") from exc

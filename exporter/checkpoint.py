"""Reading and checking a Hugging Face checkpoint directory before anything is exported."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ExportError
from exporter.families import Family, family_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


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
    if len(tok) > vocab_size:
        raise ExportError(
            f"the tokenizer in {ckpt.path} has {len(tok)} tokens but the model embeds only "
            f"{vocab_size}; the tokenizer belongs to another model: use this checkpoint's own"
        )
    return tok

"""Writing the non-program parts of a bundle: adapter (PEFT layout), tokenizer, manifest,
and the checkpoint's generation_config.json (kept as it was, beside the manifest, which
carries what serving reads of it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from agent.core.bundle import (
    ADAPTER_DIR,
    GENERATION_CONFIG,
    MANIFEST_NAME,
    TOKENIZER_DIR,
    BundleManifest,
)
from agent.core.lora_layout import LoraLayout

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def write_adapter(bundle: Path, layout: LoraLayout, lora_a: dict[str, torch.Tensor]) -> Path:
    """The initial adapter: A [r, in] as exported (frozen), B [out, r] zeros; PEFT keys/config."""
    from safetensors.torch import save_file

    out = Path(bundle) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for e in layout:
        tensors[e.peft_a_key] = lora_a[e.peft_a_key].contiguous()
        tensors[e.peft_b_key] = torch.zeros(e.out_features, e.rank)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": layout.rank,
        "lora_alpha": layout.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(layout.targets),
        "layers_to_transform": list(layout.layers),
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def write_tokenizer(bundle: Path, tokenizer) -> Path:  # noqa: ANN001 - a HF tokenizer
    out = Path(bundle) / TOKENIZER_DIR
    tokenizer.save_pretrained(out)
    return out


def write_generation_config(bundle: Path, checkpoint_dir: Path) -> Path | None:
    """Copy the checkpoint's ``generation_config.json`` into the bundle, if it has one."""
    src = Path(checkpoint_dir) / GENERATION_CONFIG
    if not src.is_file():
        return None
    return Path(shutil.copyfile(src, Path(bundle) / GENERATION_CONFIG))


def write_manifest(bundle: Path, manifest: BundleManifest) -> Path:
    path = Path(bundle) / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path

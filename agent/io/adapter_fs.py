"""Adapters on disk in the PEFT layout: read, write, and validate against a bundle.

An adapter directory holds ``adapter_model.safetensors`` (``lora_A`` / ``lora_B`` tensors under
PEFT's key names, see agent/core/lora_layout.py) and ``adapter_config.json``, so that PEFT,
llama.cpp's ``convert_lora_to_gguf.py`` and vLLM can read it too. Registry versions add a
``manifest.json`` (agent/io/registry.py).

Validation is strict because a bad adapter must never reach the serving path: the file must
parse, every B block must exist with its exact shape and be finite, and the LoRA-A tensors
must equal the ones baked into the bundle's programs (the bundle's initial ``adapter/``) —
a B trained against another A is meaningless even if its shapes fit.

numpy + safetensors.numpy only: no torch, the daemon and the service import this.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from agent.core.bundle import ADAPTER_DIR, BundleManifest, lora_layout_of
from agent.core.lora_layout import LoraLayout, flat_to_peft_b, peft_b_to_flat
from agent.errors import AdapterError, BundleError
from agent.io.atomic import fsync_path, write_synced
from agent.io.bundle_files import read_manifest

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def read_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of an adapter directory; AdapterError if missing or unreadable."""
    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{adapter_dir} has no {WEIGHTS_NAME}; it is not a PEFT adapter")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise AdapterError(f"{path} is corrupt ({exc}); re-publish the adapter") from exc


def peft_config(layout: LoraLayout, base_model: str = "") -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT expects for this layout."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": layout.rank,
        "lora_alpha": layout.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(layout.targets), "layers_to_transform": list(layout.layers),
        "fan_in_fan_out": False, "base_model_name_or_path": base_model,
    }


def write_adapter(
    adapter_dir: Path,
    layout: LoraLayout,
    flat_b: np.ndarray,
    a_tensors: Mapping[str, np.ndarray],
    *,
    base_model: str = "",
) -> None:
    """Write a PEFT adapter (A tensors as given, B from the flat vector) and fsync its files."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    tensors = {e.peft_a_key: np.ascontiguousarray(a_tensors[e.peft_a_key], dtype=np.float32)
               for e in layout}
    tensors.update(flat_to_peft_b(layout, np.asarray(flat_b, dtype=np.float32)))
    save_file(tensors, str(adapter_dir / WEIGHTS_NAME))
    fsync_path(adapter_dir / WEIGHTS_NAME)
    write_synced(adapter_dir / CONFIG_NAME,
                 json.dumps(peft_config(layout, base_model), indent=2).encode())


def lora_a_sha256(layout: LoraLayout, a_tensors: Mapping[str, np.ndarray]) -> str:
    """Hash of the frozen A tensors in layout order (as ``exporter.lora_init.a_sha256``)."""
    h = hashlib.sha256()
    for e in layout:
        h.update(e.peft_a_key.encode())
        h.update(np.ascontiguousarray(a_tensors[e.peft_a_key], dtype=np.float32).tobytes())
    return h.hexdigest()


class AdapterValidator:
    """Checks adapters against one bundle and turns them into the flat LoRA-B vector.

    Args:
        bundle_dir: the model bundle; its manifest gives the layout and its ``adapter/``
            the LoRA-A tensors every adapter must share.
    """

    def __init__(self, bundle_dir: Path, manifest: BundleManifest | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or read_manifest(self.bundle_dir)
        self.layout = lora_layout_of(self.manifest)
        self.bundle_id = self.manifest.bundle_id
        initial = read_tensors(self.bundle_dir / ADAPTER_DIR)
        try:
            self.a_tensors = {e.peft_a_key: initial[e.peft_a_key] for e in self.layout}
        except KeyError as exc:
            raise BundleError(f"{self.initial_dir} lacks {exc}; re-export the bundle") from exc
        if lora_a_sha256(self.layout, self.a_tensors) != self.manifest.lora.a_sha256:
            raise BundleError(
                f"{self.initial_dir}: its LoRA-A does not match the manifest's a_sha256, so it "
                "is not the A baked into the programs; re-export the bundle"
            )

    @property
    def initial_dir(self) -> Path:
        return self.bundle_dir / ADAPTER_DIR

    def load_flat_b(self, adapter_dir: Path, *, bundle_id: str | None = None,
                    quantize: str | None = None) -> np.ndarray:
        """Validate ``adapter_dir`` and return its flat float32 LoRA-B [num_params].

        Args:
            adapter_dir: a PEFT adapter directory.
            bundle_id: the bundle id its registry manifest claims, if any.
            quantize: the base quantization scheme its registry manifest claims, if any
                (named in the refusal when it differs from this bundle's).

        Raises:
            AdapterError: naming what is wrong (other bundle, corrupt file, wrong shape,
                different LoRA-A, non-finite values).
        """
        if bundle_id is not None and bundle_id != self.bundle_id:
            if quantize is not None and quantize != self.manifest.quantize:
                raise AdapterError(
                    f"adapter {adapter_dir} was trained on a base quantized with "
                    f"{quantize!r}, this bundle's base uses {self.manifest.quantize!r}: adapters "
                    "are interchangeable only within one quantization scheme; retrain it on "
                    f"this bundle (or serve it with a {quantize!r} bundle of the same base)"
                )
            raise AdapterError(
                f"adapter {adapter_dir} was trained for bundle {bundle_id}, this service runs "
                f"bundle {self.bundle_id}; retrain it on this bundle"
            )
        tensors = read_tensors(adapter_dir)
        for e in self.layout:
            a = tensors.get(e.peft_a_key)
            if a is None or e.peft_b_key not in tensors:
                missing = e.peft_a_key if a is None else e.peft_b_key
                raise AdapterError(f"{adapter_dir} lacks {missing}; it does not fit this "
                                   "bundle's LoRA layout")
            ref = self.a_tensors[e.peft_a_key]
            if a.shape != ref.shape or not np.array_equal(a, ref):
                raise AdapterError(
                    f"{adapter_dir}: {e.peft_a_key} differs from the bundle's frozen LoRA-A "
                    f"(a_sha256 {self.manifest.lora.a_sha256[:12]}); it belongs to another bundle"
                )
        try:
            flat = peft_b_to_flat(self.layout, tensors)
        except ValueError as exc:
            raise AdapterError(f"{adapter_dir}: {exc}; it does not fit this bundle") from exc
        if not np.isfinite(flat).all():
            raise AdapterError(f"{adapter_dir} has NaN or infinite LoRA-B values; refusing it")
        return flat

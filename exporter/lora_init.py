"""The initial adapter: LoRA-A random (Kaiming-uniform, as PEFT does) and frozen, LoRA-B zero."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from agent.core.lora_layout import LoraLayout


def init_lora_a(layout: LoraLayout, seed: int) -> dict[str, torch.Tensor]:
    """PEFT ``lora_A.weight`` [r, in] per entry, like ``kaiming_uniform_(a=sqrt(5))``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for e in layout:
        bound = 1.0 / math.sqrt(e.in_features)  # kaiming_uniform with a=sqrt(5)
        a = (torch.rand(e.rank, e.in_features, generator=gen) * 2 - 1) * bound
        out[e.peft_a_key] = a.to(torch.float32)
    return out


def a_sha256(layout: LoraLayout, lora_a: dict[str, torch.Tensor]) -> str:
    """Hash of the frozen A tensors in layout order (baked into the programs)."""
    h = hashlib.sha256()
    for e in layout:
        h.update(e.peft_a_key.encode())
        h.update(np.ascontiguousarray(lora_a[e.peft_a_key].numpy(), dtype=np.float32).tobytes())
    return h.hexdigest()

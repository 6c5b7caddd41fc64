"""A minimal bundle directory (manifest + initial adapter) for registry and adapter tests.

The registry and the validator read only the manifest and ``adapter/``; the ``.pte`` files are
empty placeholders here because nothing in these tests runs a program (tests that do use the
real ``starter_bundle`` fixture).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from agent.core.bundle import (
    BaseCheckpoint,
    BundleManifest,
    InferProgramSpec,
    LoraSpec,
    ModelShape,
    TokenizerSpec,
    TrainProgramSpec,
    TrainShape,
    WeightsFileSpec,
    lora_layout_of,
)
from agent.io.adapter_fs import lora_a_sha256, write_adapter


def make_bundle(root: Path, *, seed: int = 0, weights_sha: str = "w" * 64) -> Path:
    """Write a tiny bundle under ``root``; ``seed`` picks its LoRA-A, ``weights_sha`` its base."""
    root.mkdir(parents=True, exist_ok=True)
    shape = ModelShape(family="llama", vocab_size=32, hidden_size=8, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=4, intermediate_size=16,
                       max_position_embeddings=64, num_params=1000)
    lora = LoraSpec(rank=2, alpha=4.0, targets=("q_proj", "v_proj"), layers=(0, 1),
                    num_params=2 * (2 * 8 + 2 * 4), a_sha256="")
    manifest = BundleManifest(
        created_at="2026-01-01T00:00:00Z",
        base=BaseCheckpoint(source="tiny", sha256=weights_sha, random_weights=True),
        model=shape, lora=lora,
        train=TrainProgramSpec(max_length=16, max_targets=15, head_rows=8,
                               shapes=(TrainShape(method="s2b1", slices=2, batch=1),)),
        infer=InferProgramSpec(max_context=32, prefill_chunk=8),
        tokenizer=TokenizerSpec(),
        weights=WeightsFileSpec(size=0, sha256=hashlib.sha256(b"").hexdigest()),
    )
    layout = lora_layout_of(manifest)
    rng = np.random.default_rng(seed)
    a = {e.peft_a_key: rng.standard_normal((e.rank, e.in_features)).astype(np.float32)
         for e in layout}
    manifest = manifest.model_copy(update={
        "lora": lora.model_copy(update={"a_sha256": lora_a_sha256(layout, a)})})
    (root / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    for name in ("train.pte", "infer.pte", "weights.ptd"):
        (root / name).write_bytes(b"")
    (root / "tokenizer").mkdir(exist_ok=True)
    write_adapter(root / "adapter", layout, np.zeros(layout.num_params, np.float32), a)
    return root


def make_adapter(bundle: Path, out: Path, value: float) -> Path:
    """An adapter for ``bundle`` whose every LoRA-B value is ``value``."""
    from agent.io.adapter_fs import AdapterValidator

    v = AdapterValidator(bundle)
    write_adapter(out, v.layout, np.full(v.layout.num_params, value, np.float32), v.a_tensors)
    return out

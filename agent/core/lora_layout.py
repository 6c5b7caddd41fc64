"""The flat LoRA-B layout shared by the exporter, the trainer and the inference service.

MobiZO trains only the LoRA **B** matrices (LoRA-FA: A is random and frozen, B starts at
zero; arXiv 2409.15520 §3). All B matrices of a model travel as ONE flat float32 vector of
``num_params`` values per slice: the programs take ``lora_b`` of shape ``[S, num_params]``,
one row per perturbed model (MP-LoRA). A flat vector is the cheapest to build on the host and
measured no slower inside the program than per-layer inputs (shared/DESIGN.md §3).

Within a row, entries are ordered by layer, then by target in ``CANONICAL_TARGETS`` order.
Each entry stores Bᵀ, i.e. a ``[rank, out_features]`` block in row-major order, because the
program multiplies ``(x·Aᵀ) [S, b·T, r] @ Bᵀ [S, r, out]`` with ``bmm``. PEFT files store
B as ``[out_features, rank]``; :func:`peft_b_to_flat` / :func:`flat_to_peft_b` convert.

Pure: numpy only, so the daemon and the registry can use it without torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The seven projections of a Llama/Qwen2 block, in the order the flat vector uses.
CANONICAL_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)
ATTENTION_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA'd linear: where its Bᵀ block sits in the flat vector."""

    layer: int
    target: str
    in_features: int
    out_features: int
    rank: int
    offset: int  # first index of this block in the flat vector

    @property
    def size(self) -> int:
        return self.rank * self.out_features

    @property
    def module_path(self) -> str:
        """The module path inside a transformers causal LM (``model.layers.3.self_attn.q_proj``)."""
        block = "self_attn" if self.target in ATTENTION_TARGETS else "mlp"
        return f"model.layers.{self.layer}.{block}.{self.target}"

    @property
    def peft_a_key(self) -> str:
        return f"base_model.model.{self.module_path}.lora_A.weight"

    @property
    def peft_b_key(self) -> str:
        return f"base_model.model.{self.module_path}.lora_B.weight"


@dataclass(frozen=True)
class LoraLayout:
    """Every LoRA'd linear of a model and the flat-vector layout of their B matrices."""

    entries: tuple[LoraEntry, ...]
    rank: int
    alpha: float

    @property
    def num_params(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def scaling(self) -> float:
        """alpha / rank, the LoRA scale (Hu et al. 2021)."""
        return self.alpha / self.rank

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({e.layer for e in self.entries}))

    @property
    def targets(self) -> tuple[str, ...]:
        present = {e.target for e in self.entries}
        return tuple(t for t in CANONICAL_TARGETS if t in present)

    def __iter__(self) -> Iterator[LoraEntry]:
        return iter(self.entries)

    @classmethod
    def build(
        cls,
        *,
        layer_dims: Mapping[str, tuple[int, int]],
        layers: Sequence[int],
        targets: Sequence[str],
        rank: int,
        alpha: float,
    ) -> LoraLayout:
        """Lay out B blocks for ``targets`` on ``layers``.

        Args:
            layer_dims: ``target -> (in_features, out_features)`` for one block (all blocks
                of the supported families have the same shapes).
            layers: indices of the blocks that carry LoRA.
            targets: projection names, any subset of ``CANONICAL_TARGETS``.
            rank: LoRA rank r.
            alpha: LoRA alpha; the update is scaled by alpha / r.
        """
        unknown = sorted(set(targets) - set(CANONICAL_TARGETS))
        if unknown:
            raise ValueError(
                f"unknown LoRA targets {unknown}; choose from {', '.join(CANONICAL_TARGETS)}"
            )
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        ordered_targets = [t for t in CANONICAL_TARGETS if t in set(targets)]
        entries: list[LoraEntry] = []
        offset = 0
        for layer in sorted(set(layers)):
            for target in ordered_targets:
                fan_in, fan_out = layer_dims[target]
                entry = LoraEntry(layer, target, fan_in, fan_out, rank, offset)
                entries.append(entry)
                offset += entry.size
        if not entries:
            raise ValueError("the LoRA layout is empty: give at least one layer and one target")
        return cls(tuple(entries), rank, float(alpha))


def peft_b_to_flat(layout: LoraLayout, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """PEFT ``lora_B.weight`` tensors ([out, r]) → one flat float32 vector [num_params]."""
    flat = np.empty(layout.num_params, dtype=np.float32)
    for e in layout:
        b = tensors[e.peft_b_key]
        if b.shape != (e.out_features, e.rank):
            raise ValueError(
                f"{e.peft_b_key} has shape {tuple(b.shape)}, expected {(e.out_features, e.rank)}"
            )
        flat[e.offset : e.offset + e.size] = np.ascontiguousarray(b.T, dtype=np.float32).ravel()
    return flat


def flat_to_peft_b(layout: LoraLayout, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`peft_b_to_flat`: flat vector → PEFT ``lora_B.weight`` tensors."""
    if flat.shape != (layout.num_params,):
        raise ValueError(f"flat LoRA-B has shape {flat.shape}, expected ({layout.num_params},)")
    out: dict[str, np.ndarray] = {}
    for e in layout:
        bt = flat[e.offset : e.offset + e.size].reshape(e.rank, e.out_features)
        out[e.peft_b_key] = np.ascontiguousarray(bt.T, dtype=np.float32)
    return out

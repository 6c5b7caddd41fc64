"""Supported model families: one row per Hugging Face ``model_type``.

A flat, commented table (after litgpt/config.py): each row says which transformers
``model_type`` it covers, which checkpoints are known to belong to it, and the one or two
architecture switches the export-friendly decoder (exporter/model.py) needs. Adding a family
that is a Llama variant is one row here plus a tiny checkpoint in the tests' parametrization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.core.bundle import ModelShape
from agent.errors import ExportError


@dataclass(frozen=True)
class Family:
    """One supported decoder family."""

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this row covers
    examples: str  # checkpoints known to work, for error messages and docs
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2) or not (Llama)


FAMILIES: tuple[Family, ...] = (
    # Llama 2/3 (incl. 3.1/3.2 rope scaling, handled by transformers' rotary module),
    # TinyLlama and SmolLM/SmolLM2 all load as LlamaForCausalLM.
    Family("llama", ("llama",), "Llama 2/3, TinyLlama, SmolLM", qkv_bias=False),
    # Qwen2 / Qwen2.5: a Llama block with biases on q, k and v.
    Family("qwen2", ("qwen2",), "Qwen2, Qwen2.5", qkv_bias=True),
)


def family_for(model_type: str) -> Family:
    """The family row of a config's ``model_type``; ExportError naming the supported ones."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = "; ".join(f"{f.name} ({f.examples})" for f in FAMILIES)
    raise ExportError(
        f"model_type {model_type!r} is not a supported family. Supported: {supported}. "
        "Export a checkpoint of one of these families, or add a row to exporter/families.py "
        "if the architecture is a Llama variant."
    )


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, None)
    return default if value is None else value


def model_shape(cfg: Any, num_params: int) -> ModelShape:
    """Map a transformers config (LlamaConfig, Qwen2Config) onto the manifest's ModelShape."""
    fam = family_for(cfg.model_type)
    heads = int(cfg.num_attention_heads)
    head_dim = int(_get(cfg, "head_dim", cfg.hidden_size // heads))
    if getattr(cfg, "use_sliding_window", False):
        raise ExportError(
            "this qwen2 checkpoint uses sliding-window attention, which the exporter does not "
            "implement; export a checkpoint with use_sliding_window=false"
        )
    return ModelShape(
        family=fam.name,
        vocab_size=int(cfg.vocab_size),
        hidden_size=int(cfg.hidden_size),
        num_layers=int(cfg.num_hidden_layers),
        num_heads=heads,
        num_kv_heads=int(_get(cfg, "num_key_value_heads", heads)),
        head_dim=head_dim,
        intermediate_size=int(cfg.intermediate_size),
        max_position_embeddings=int(_get(cfg, "max_position_embeddings", 2048)),
        num_params=int(num_params),
    )

"""Supported model families: one row per Hugging Face ``model_type``, and the config check.

A flat, commented table (after litgpt/config.py): each row says which transformers
``model_type`` it covers, which checkpoints are known to belong to it, and the architecture
switches the export-friendly decoder (exporter/layers.py, exporter/model.py) needs. Adding a
family that is a variant of these is one row here plus a tiny checkpoint in the tests'
parametrization (tests/exporter/tiny.py).

:func:`check_config` refuses, before anything is lowered, every config field that changes
the maths in a way the decoder does not implement (an unknown rope type, MoE, sliding-window
layers where not implemented, a pre-quantized checkpoint, ...): a bundle is never exported
wrong, and the error names the field and what to do.
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
    qk_norm: bool = False  # RMSNorm over head_dim on q and k, before RoPE
    norm_offset: float = 0.0  # every RMSNorm scales by (offset + w): Gemma's (1 + w) is 1
    embed_scale: bool = False  # token embeddings are multiplied by sqrt(hidden_size)
    sandwich_norms: bool = False  # four norms per block: after attention, before/after the MLP
    sliding_window: bool = False  # layer_types' "sliding_attention" layers are implemented


FAMILIES: tuple[Family, ...] = (
    # Llama 2/3 (incl. the 3.1/3.2 "llama3" rope scaling: the cos/sin tables come from
    # transformers' own rotary module), TinyLlama and SmolLM/SmolLM2: LlamaForCausalLM.
    Family("llama", ("llama",), "Llama 2/3, Llama 3.2, TinyLlama, SmolLM2", qkv_bias=False),
    # Qwen2 / Qwen2.5: a Llama block with biases on q, k and v.
    Family("qwen2", ("qwen2",), "Qwen2, Qwen2.5", qkv_bias=True),
    # Qwen3 (dense): a Llama block with an RMSNorm over each head of q and k before RoPE.
    Family("qwen3", ("qwen3",), "Qwen3-0.6B/1.7B/4B", qkv_bias=False, qk_norm=True),
    # Gemma 3 text (270m, 1B): (1 + w) RMSNorms, embeddings × sqrt(hidden), GELU-tanh MLP,
    # q/k norms, four norms per block, local sliding-window layers between global ones (their
    # own rope base), attention scaled by query_pre_attn_scalar^-1/2, optional final logit
    # soft-capping.
    Family("gemma3_text", ("gemma3_text",), "Gemma-3-270m, Gemma-3-1B", qkv_bias=False,
           qk_norm=True, norm_offset=1.0, embed_scale=True, sandwich_norms=True,
           sliding_window=True),
)

# The activations the decoder's MLP implements (config's hidden_act / hidden_activation).
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
# Rope types whose cos/sin tables are static (a function of the position only): the decoder
# bakes them in from transformers' rotary module. "dynamic" and "longrope" depend on the
# sequence length at run time, so they are refused.
ROPE_TYPES = ("default", "linear", "llama3")
# Config fields of mixture-of-experts models (any of them set means MoE).
MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def family_for(model_type: str) -> Family:
    """The family row of a config's ``model_type``; ExportError naming the supported ones."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = "; ".join(f"{f.name} ({f.examples})" for f in FAMILIES)
    raise ExportError(
        f"model_type {model_type!r} is not a supported family. Supported: {supported}. "
        "Export a checkpoint of one of these families, or add a row to exporter/families.py "
        "if the architecture is a variant of one of them."
    )


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, None)
    return default if value is None else value


def activation_of(cfg: Any) -> str:
    """The MLP activation's name (Gemma calls the field ``hidden_activation``)."""
    return str(_get(cfg, "hidden_activation", _get(cfg, "hidden_act", "silu")))


def rope_parameters(cfg: Any) -> dict[str, dict[str, Any]]:
    """Rope parameters per layer type (one entry "all" where every layer shares them)."""
    params = _get(cfg, "rope_parameters", {}) or {}
    if "rope_type" in params or "rope_theta" in params:
        return {"all": dict(params)}
    return {kind: dict(p or {}) for kind, p in params.items()}


def _refuse(field: str, value: Any, why: str, fix: str) -> ExportError:
    return ExportError(f"config.json field {field} = {value!r}: {why}; {fix}")


def check_config(cfg: Any) -> Family:
    """The family of ``cfg`` after checking every field that changes the maths is handled."""
    fam = family_for(cfg.model_type)
    if _get(cfg, "quantization_config"):
        raise _refuse("quantization_config", "...", "this is a pre-quantized checkpoint",
                      "export the original float checkpoint (and pass --quantize if wanted)")
    for field in MOE_FIELDS:
        if _get(cfg, field):
            raise _refuse(field, _get(cfg, field), "mixture-of-experts layers are not "
                          "implemented", "export a dense checkpoint of a supported family")
    act = activation_of(cfg)
    if act not in ACTIVATIONS:
        raise _refuse("hidden_act", act, "the decoder implements only "
                      f"{', '.join(ACTIVATIONS)}", "export a checkpoint that uses one of them")
    for kind, params in rope_parameters(cfg).items():
        rope_type = params.get("rope_type", "default")
        where = "rope_parameters" + ("" if kind == "all" else f"[{kind!r}]")
        if rope_type not in ROPE_TYPES:
            raise _refuse(f"{where}.rope_type", rope_type, "this rope type is not supported "
                          f"(supported: {', '.join(ROPE_TYPES)})",
                          "export a checkpoint with one of these")
        if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
            raise _refuse(f"{where}.partial_rotary_factor", params["partial_rotary_factor"],
                          "partial rotary embeddings are not implemented",
                          "export a checkpoint that ropes the whole head")
    _check_attention(cfg, fam)
    return fam


def _check_attention(cfg: Any, fam: Family) -> None:
    sliding = "sliding_attention" in (_get(cfg, "layer_types", ()) or ())
    if (sliding or _get(cfg, "use_sliding_window", False)) and not fam.sliding_window:
        raise _refuse("use_sliding_window / layer_types", "sliding_attention",
                      f"sliding-window attention is not implemented for {fam.name}",
                      "export a checkpoint with use_sliding_window=false")
    if sliding and not _get(cfg, "sliding_window"):
        raise _refuse("sliding_window", _get(cfg, "sliding_window"), "layer_types has "
                      "sliding_attention layers but no window size", "fix config.json")
    if _get(cfg, "attn_logit_softcapping") is not None:
        raise _refuse("attn_logit_softcapping", cfg.attn_logit_softcapping,
                      "attention logit soft-capping is not implemented",
                      "export a checkpoint with attn_logit_softcapping=null (Gemma 3 has none)")
    if _get(cfg, "use_bidirectional_attention", False):
        raise _refuse("use_bidirectional_attention", True, "bidirectional attention is not "
                      "a causal decoder", "export a causal (generative) checkpoint")


def model_shape(cfg: Any, num_params: int) -> ModelShape:
    """Check a transformers config (:func:`check_config`) and map it onto the manifest's
    ModelShape."""
    fam = check_config(cfg)
    heads = int(cfg.num_attention_heads)
    head_dim = int(_get(cfg, "head_dim", cfg.hidden_size // heads))
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

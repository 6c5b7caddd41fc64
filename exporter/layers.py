"""The export-friendly building blocks of the decoder: norm, RoPE, attention, MP-LoRA linears.

Each re-expresses a transformers layer in ops that XNNPACK delegates with static shapes
(shared/DESIGN.md §3, "what got nearly everything delegated"); exporter/model.py assembles
them into the decoder and the program bodies.

- RMSNorm's mean of squares is a matmul with a constant ``1/d`` column (``mean.dim`` on 3-D
  is not delegated).
- RoPE's rotate-half is a matmul with a constant signed permutation matrix (the cos/sin
  tables come from transformers' own rotary module, see ``Decoder.rope_tables``).
- Attention is explicit 3-D ``bmm`` with an additive causal mask in the train program; the
  infer program's reads its KV cache through ExecuTorch's LLM ops (:func:`cached_attention`).

MP-LoRA (arXiv 2409.15520 §3.2), per LoRA'd linear with S slices of b sequences::

    h = base(x) + bmm( (x · (scale·A)ᵀ).view(S, b·T, r),  Bᵀ_s  [S, r, out] ).view(S·b, T, out)

``scale·A`` is a frozen constant (a packed matmul for XNNPACK); ``Bᵀ_s`` is sliced with static
offsets from the flat ``lora_b`` [S, P] program input (agent/core/lora_layout.py) and used only
through ``bmm`` (an fp32 ``mm`` whose weight is an input is not delegated).

Family switches (exporter/families.py) the blocks honour: q/k RMSNorm per head (Qwen3, Gemma
3), ``(1 + w)`` norms, four norms per block and a GELU-tanh MLP (Gemma 3), sliding-window
layers (a per-layer mask and rope table, chosen by exporter/model.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from exporter.families import activation_of, family_for

NEG_INF = -1e30  # additive mask value; finite so an all-masked row cannot produce NaN


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · (offset + w)`` with the mean as a matmul by a constant
    1/d column (``offset`` 1 is Gemma's ``(1 + w)``, folded into the stored weight)."""

    def __init__(self, weight: Tensor, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        d = weight.shape[0]
        w = weight.detach().to(torch.float32) + offset
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.register_buffer("inv_d", torch.full((d, 1), 1.0 / d), persistent=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = torch.matmul(x * x, self.inv_d)
        return x * torch.rsqrt(var + self.eps) * self.weight


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation (transformers' ``gelu_pytorch_tanh``), spelt out: XNNPACK's
    gelu is the exact erf form and ignores ``approximate="tanh"``, so ``F.gelu`` would lower
    to a different function."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + torch.tanh(inner))


def silu(x: Tensor) -> Tensor:
    return torch.nn.functional.silu(x)


ACTIVATION_FNS = {"silu": silu, "gelu_pytorch_tanh": gelu_tanh}


def rotate_half_matrix(head_dim: int) -> Tensor:
    """R with ``x @ R == cat(-x[..., h:], x[..., :h])`` (transformers' rotate_half), h = d/2."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    for j in range(half):
        r[j + half, j] = -1.0
        r[j, j + half] = 1.0
    return r


def frozen_linear(src: nn.Linear) -> nn.Linear:
    """An fp32 copy of ``src`` whose weight and bias are frozen constants."""
    out = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
    out.weight = nn.Parameter(src.weight.detach().to(torch.float32).clone(), requires_grad=False)
    if src.bias is not None:
        out.bias = nn.Parameter(src.bias.detach().to(torch.float32).clone(), requires_grad=False)
    return out


class LoraLinear(nn.Module):
    """A frozen base linear plus the MP-LoRA term (see the module docstring)."""

    def __init__(self, base: nn.Linear, a_scaled: Tensor | None, offset: int, rank: int) -> None:
        super().__init__()
        self.base = frozen_linear(base)
        self.out_features = base.out_features
        self.rank = rank
        self.offset = offset
        if a_scaled is None:
            self.lora_a = None
        else:
            self.lora_a = nn.Linear(base.in_features, rank, bias=False)
            self.lora_a.weight = nn.Parameter(a_scaled.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor, lora_b: Tensor | None, slices: int,
                shared_input: bool = False) -> Tensor:
        """x [S·b, T, in] → [S·b, T, out]; with ``shared_input``, x [b, T, in] is the one
        input of every slice (the first LoRA'd block after a shared prefix): the frozen
        projection and x·A then run once on the b rows, and only the LoRA term per slice."""
        h = self.base(x)
        n, t, _ = x.shape
        r, out = self.rank, self.out_features
        if self.lora_a is None or lora_b is None:
            return h.repeat(slices, 1, 1) if shared_input else h
        bt = lora_b[:, self.offset : self.offset + r * out].reshape(slices, r, out)
        if not shared_input:
            xa = self.lora_a(x).reshape(slices, (n // slices) * t, r)
            return h + torch.bmm(xa, bt).reshape(n, t, out)
        # One bmm against the S B's side by side, then a broadcast add of the shared frozen
        # part: no repeat, which XNNPACK does not delegate (it would split the partition).
        rows = n * t
        b_side = bt.permute(1, 0, 2).reshape(1, r, slices * out)
        delta = torch.bmm(self.lora_a(x).reshape(1, rows, r), b_side)  # [1, rows, S·out]
        delta = delta.reshape(rows, slices, out).permute(1, 0, 2)  # [S, rows, out]
        # contiguous: traced on a permuted tensor, RoPE's matmul would become expand + bmm,
        # and the expands split the partition again
        return (delta + h.reshape(1, rows, out)).contiguous().reshape(slices * n, t, out)


class Block(nn.Module):
    """One decoder block: pre-norm attention + gated MLP, with the family's switches.

    Llama/Qwen: ``h += o_proj(attn(norm(h)))``; ``h += mlp(post_norm(h))``. Gemma 3's four
    norms (``sandwich``): ``h += post_attn_norm(o_proj(attn(norm(h))))``;
    ``h += post_ff_norm(mlp(pre_ff_norm(h)))``. With ``qk_norm``, q and k are RMS-normed per
    head before RoPE.
    """

    def __init__(self, hf_layer: Any, cfg: ModelDims, loras: dict[str, tuple],
                 index: int = 0) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.dims = cfg
        off = cfg.norm_offset
        self.input_norm = RMSNorm(hf_layer.input_layernorm.weight, cfg.eps, off)
        # Llama's post_attention_layernorm is the MLP's input norm; Gemma's is the norm of
        # the attention output (its MLP input norm is pre_feedforward_layernorm)
        self.post_norm = RMSNorm(hf_layer.post_attention_layernorm.weight, cfg.eps, off)
        self.sandwich = cfg.sandwich_norms
        if self.sandwich:
            self.pre_ff_norm = RMSNorm(hf_layer.pre_feedforward_layernorm.weight, cfg.eps, off)
            self.post_ff_norm = RMSNorm(hf_layer.post_feedforward_layernorm.weight, cfg.eps,
                                        off)
        self.qk_norm = cfg.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(attn.q_norm.weight, cfg.eps, off)
            self.k_norm = RMSNorm(attn.k_norm.weight, cfg.eps, off)
        self.act = ACTIVATION_FNS[cfg.activation]
        # which attention this layer runs: a sliding window or global, and its rope table
        self.layer_type = cfg.layer_types[index]
        self.sliding = self.layer_type == "sliding_attention"

        def wrap(name: str, lin: nn.Linear) -> LoraLinear:
            a, off, rank = loras.get(name, (None, 0, 1))
            return LoraLinear(lin, a, off, rank)

        self.q_proj = wrap("q_proj", attn.q_proj)
        self.k_proj = wrap("k_proj", attn.k_proj)
        self.v_proj = wrap("v_proj", attn.v_proj)
        self.o_proj = wrap("o_proj", attn.o_proj)
        self.gate_proj = wrap("gate_proj", mlp.gate_proj)
        self.up_proj = wrap("up_proj", mlp.up_proj)
        self.down_proj = wrap("down_proj", mlp.down_proj)
        self.has_lora = bool(loras)

    def rope(self, x: Tensor, cos: Tensor, sin: Tensor, rot: Tensor) -> Tensor:
        """x [N, T, H, hd]; cos/sin broadcastable to it."""
        return x * cos + torch.matmul(x, rot) * sin

    def qkv(self, x: Tensor, lora_b: Tensor | None, slices: int, cos: Tensor, sin: Tensor,
            rot: Tensor, shared_input: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Normed input → roped q [N,T,H,hd], k [N,T,KV,hd], v [N,T,KV,hd] (N = S·b; the
        input is [b, T, d] when ``shared_input``, see LoraLinear.forward)."""
        d = self.dims
        n, t = x.shape[0] * (slices if shared_input else 1), x.shape[1]
        q = self.q_proj(x, lora_b, slices, shared_input).reshape(n, t, d.heads, d.head_dim)
        k = self.k_proj(x, lora_b, slices, shared_input).reshape(n, t, d.kv_heads, d.head_dim)
        v = self.v_proj(x, lora_b, slices, shared_input).reshape(n, t, d.kv_heads, d.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rope(q, cos, sin, rot), self.rope(k, cos, sin, rot), v

    def attn_out(self, o: Tensor, lora_b: Tensor | None, slices: int) -> Tensor:
        """The attention branch's output projection (and Gemma's norm of it): [N, T, d]."""
        o = self.o_proj(o, lora_b, slices)
        return self.post_norm(o) if self.sandwich else o

    def ffn(self, h: Tensor, lora_b: Tensor | None, slices: int) -> Tensor:
        """The MLP branch from the residual stream: what is added to it."""
        if self.sandwich:
            return self.post_ff_norm(self.mlp(self.pre_ff_norm(h), lora_b, slices))
        return self.mlp(self.post_norm(h), lora_b, slices)

    def mlp(self, x: Tensor, lora_b: Tensor | None, slices: int) -> Tensor:
        g = self.gate_proj(x, lora_b, slices)
        u = self.up_proj(x, lora_b, slices)
        return self.down_proj(self.act(g) * u, lora_b, slices)


class ModelDims:
    """The few numbers and switches the blocks need (plain attributes: torch.export treats
    them as constants), from a transformers config and its family row."""

    def __init__(self, cfg: Any) -> None:
        fam = family_for(cfg.model_type)
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden // self.heads)
        self.eps = float(cfg.rms_norm_eps)
        self.vocab = int(cfg.vocab_size)
        self.norm_offset = fam.norm_offset
        self.qk_norm, self.sandwich_norms = fam.qk_norm, fam.sandwich_norms
        self.activation = activation_of(cfg)
        # Gemma scales queries by query_pre_attn_scalar^-1/2 instead of head_dim^-1/2
        scalar = getattr(cfg, "query_pre_attn_scalar", None) or self.head_dim
        self.attn_scale = float(scalar) ** -0.5
        self.embed_scale = math.sqrt(self.hidden) if fam.embed_scale else None
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)
        layers = int(cfg.num_hidden_layers)
        self.layer_types = tuple(getattr(cfg, "layer_types", None) or
                                 ("full_attention",) * layers)[:layers]
        self.window = int(getattr(cfg, "sliding_window", None) or 0)

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float,
              groups: int) -> Tensor:
    """Softmax attention, GQA without copying k/v: q [N, Tq, H, hd], k/v [N, Tk, KV, hd],
    ``mask`` [groups·Tq, Tk] additive (the [Tq, Tk] mask repeated ``groups`` times) → [N, Tq, H·hd].

    Query head i reads kv head i // groups (transformers' repeat_kv), so the ``groups`` query
    heads of one kv head are contiguous: stacking them along the query axis turns GQA into one
    3-D ``bmm`` per kv head. Expanding k/v to H heads instead is an expand + copy that XNNPACK
    does not delegate: it split every layer's graph into two partitions.
    """
    n, tq, h, hd = q.shape
    tk, kv = k.shape[1], k.shape[2]
    q = q.transpose(1, 2).reshape(n * kv, groups * tq, hd)
    k = k.transpose(1, 2).reshape(n * kv, tk, hd)
    v = v.transpose(1, 2).reshape(n * kv, tk, hd)
    att = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale + mask, dim=-1)
    o = torch.bmm(att, v).reshape(n, h, tq, hd).transpose(1, 2)
    return o.reshape(n, tq, h * hd)


def llm_ops() -> Any:  # torch.ops.llama
    """ExecuTorch's LLM custom ops (``torch.ops.llama``: ``update_cache``, ``custom_sdpa``).

    Importing ``executorch.extension.llm.custom_ops.custom_ops`` loads the wheel's
    ``libcustom_ops_aot_lib.so`` (the eager CPU kernels, and the ExecuTorch kernels a program
    that calls them needs: agent/io/llm_ops.py loads the same library in the runtime) and
    registers the ops' meta functions, which torch.export traces them with.
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

    return torch.ops.llama


def cached_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
                     start: Any, scale: float, mask: Tensor | None = None) -> Tensor:
    """Write k/v [1, C, KV, hd] into the caches [1, ctx, KV, hd] at ``start`` (in place) and
    attend q [1, C, H, hd] over them → [1, C, H·hd]; ``start`` is an int (a SymInt in export).

    Causal (``mask`` None): query i reads cache positions 0..start+i only, so the work grows
    with the filled context, not the cache size. With ``mask`` [C, ctx] (additive; a sliding
    window) every cache position is scored and masked. GQA needs no copy: the kernel maps
    query head i to kv head i // groups, as transformers' repeat_kv does. The masked
    ``bmm`` form (:func:`attention`) transposed the whole cache twice per layer and token and
    multiplied over all ``ctx`` positions: 40 % of a decode step on the 110M shape.
    """
    ops = llm_ops()
    ops.update_cache(k, k_cache, start)
    ops.update_cache(v, v_cache, start)
    if mask is None:
        o = ops.custom_sdpa(q, k_cache, v_cache, start, None, 0.0, True, scale)
    else:
        o = ops.custom_sdpa(q, k_cache, v_cache, 0, mask, 0.0, False, scale)
    n, t, h, hd = q.shape
    return o.reshape(n, t, h * hd)

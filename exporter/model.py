"""An export-friendly Llama/Qwen2 decoder with MP-LoRA, built from a transformers model.

The weights come from transformers' own model (``AutoModelForCausalLM`` on the checkpoint);
this module only re-expresses the forward pass in ops that XNNPACK delegates with static
shapes (shared/DESIGN.md §3). The building blocks (RMSNorm, RoPE, attention, the MP-LoRA
linear and its formula) are in exporter/layers.py; here are the decoder and the bodies of
the programs' methods:

- The loss is softmax → gather → log (XNNPACK has no log_softmax), computed only at the
  target positions (a static window of K per sequence, gathered before the final norm and the
  LM head). In ``train.pte`` the head and the loss are a method of their own
  (:class:`HeadLoss`, dynamic in its rows) that the runtime calls on chunks of the S·b·K
  target rows, so the [rows, vocab] logits stay bounded however many slices a step runs.
  (Chunking inside one method does not bound them: XNNPACK fuses the chunks into one
  partition that outputs them all at once, and a chunk per partition packs the head's
  weights once per chunk.)
- Inference (:class:`InferStep`) writes a KV cache of mutable buffers shared by its methods.

Rows are slice-major: row ``s·b + j`` is sequence j evaluated with slice s. With LoRA only on
the last k layers, the frozen prefix runs once on the b sequences ("prefix sharing", DESIGN §3).
The first LoRA'd block (block 0 with LoRA everywhere) still reads those b shared rows, so its
frozen q/k/v projections run once too; the rows fork into S slices inside that block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from agent.core.lora_layout import LoraLayout
from agent.core.targets import target_window
from exporter.layers import (
    NEG_INF,
    Block,
    LoraLinear,
    ModelDims,
    RMSNorm,
    attention,
    frozen_linear,
    rotate_half_matrix,
)

# The building blocks stay importable from here (tests and benchmarks import them so).
__all__ = [
    "NEG_INF", "Block", "Decoder", "HeadLoss", "InferStep", "KVCache", "LoraLinear",
    "LossMethod", "ModelDims", "RMSNorm", "TrainForward", "TrainMethod", "attention",
    "rotate_half_matrix", "target_nll",
]


class Decoder(nn.Module):
    """Weights + LoRA of the whole model; the train and infer wrappers below share it."""

    def __init__(self, hf_model: nn.Module, layout: LoraLayout, lora_a: dict[str, Tensor]) -> None:
        """Args:
            hf_model: a transformers LlamaForCausalLM / Qwen2ForCausalLM (float32).
            layout: which linears carry LoRA and where their Bᵀ sits in ``lora_b``.
            lora_a: PEFT ``lora_A.weight`` tensors [r, in], keyed by PEFT key (unscaled).
        """
        super().__init__()
        cfg = hf_model.config
        self.dims = dims = ModelDims(cfg)
        inner = hf_model.model
        self.embed = nn.Parameter(
            inner.embed_tokens.weight.detach().to(torch.float32).clone(), requires_grad=False
        )
        per_layer: dict[int, dict[str, tuple]] = {}
        for e in layout:
            a = lora_a[e.peft_a_key].to(torch.float32) * layout.scaling
            per_layer.setdefault(e.layer, {})[e.target] = (a, e.offset, e.rank)
        self.blocks = nn.ModuleList(
            Block(layer, dims, per_layer.get(i, {})) for i, layer in enumerate(inner.layers)
        )
        self.first_lora = min(per_layer) if per_layer else len(self.blocks)
        self.norm = RMSNorm(inner.norm.weight, dims.eps)
        self.lm_head = frozen_linear(hf_model.get_output_embeddings())
        self.register_buffer("rot", rotate_half_matrix(dims.head_dim), persistent=False)
        self._rotary = inner.rotary_emb  # transformers' own: cos/sin tables for any rope type
        self.scale = 1.0 / math.sqrt(dims.head_dim)

    def rope_tables(self, length: int) -> tuple[Tensor, Tensor]:
        """cos, sin [length, hd] for positions 0..length-1, from transformers' rotary module."""
        pos = torch.arange(length).unsqueeze(0)
        with torch.no_grad():
            cos, sin = self._rotary(self.embed[:1].unsqueeze(0), pos)
        return cos[0].to(torch.float32).clone(), sin[0].to(torch.float32).clone()


class TrainForward(nn.Module):
    """Per-slice losses [S] of one static (S, b, T, K) shape; the train program's body.

    ``forward(tokens[b,T], loss_mask[b,T], lora_b[S,P])`` is the convenient eager form (the
    mask packed by :func:`agent.core.targets.target_window`); the exported methods are
    :meth:`windowed`, which takes the packed window: ``target_pos[b,K]`` (position p predicts
    token p+1) and ``target_weight[b,K]``. Only those K positions per sequence reach the
    norm and the LM head: the head is the biggest matmul of a small model and runs once per
    slice, while prompts need no logits (agent/core/targets.py).

    Sequences are right-padded, so causal attention never lets padding reach a real token.
    Each slice's loss is the weighted mean over the targets of its b sequences. With
    ``lora=False`` it is the plain forward (the benchmark's ``t_fwd`` method): S·b rows, no
    LoRA term.
    """

    def __init__(self, core: Decoder, *, slices: int, batch: int, max_length: int,
                 max_targets: int | None = None, loss_chunk: int = 128,
                 lora: bool = True) -> None:
        super().__init__()
        self.core = core
        self.slices, self.batch, self.length = slices, batch, max_length
        self.max_targets = min(max_targets or max_length - 1, max_length - 1)
        self.lora = lora
        cos, sin = core.rope_tables(max_length)
        self.register_buffer("cos", cos[:, None, :], persistent=False)  # [T, 1, hd]
        self.register_buffer("sin", sin[:, None, :], persistent=False)
        causal = torch.full((max_length, max_length), NEG_INF).triu(1)
        # tiled for the query heads that share a kv head (see attention())
        self.register_buffer("causal", causal.repeat(core.dims.groups, 1), persistent=False)
        # first flat index of each of the S·b rows in the [S·b·T, d] hidden states
        row_start = torch.arange(slices * batch, dtype=torch.long)[:, None] * max_length
        self.register_buffer("row_start", row_start, persistent=False)
        self.loss_chunk = max(1, loss_chunk)

    def trunk(self, tokens: Tensor, lora_b: Tensor | None) -> Tensor:
        """Hidden states after the last block, before the final norm: [S·b, T, d]."""
        core, d = self.core, self.core.dims
        s = self.slices
        h = torch.nn.functional.embedding(tokens, core.embed)  # [b, T, d]
        repeated = False
        share = self.lora  # prefix sharing only when slices differ by their LoRA
        if not share:
            h = h.repeat(s, 1, 1)
            repeated = True
        for i, blk in enumerate(core.blocks):
            # The first LoRA'd block still reads the b shared rows: its q/k/v projections run
            # once on them (LoraLinear's shared_input), and the rows fork into S slices there.
            fork = not repeated and i >= core.first_lora and lora_b is not None
            lb = lora_b if ((repeated or fork) and self.lora) else None
            x = blk.input_norm(h)
            q, k, v = blk.qkv(x, lb, s if lb is not None else 1, self.cos, self.sin, core.rot,
                              shared_input=fork)
            o = attention(q, k, v, self.causal, core.scale, d.groups)
            o = blk.o_proj(o, lb, s if lb is not None else 1)
            if fork:  # the shared residual broadcast over the slices (a repeat splits XNNPACK)
                h = (o.reshape(s, -1, d.hidden) + h.reshape(1, -1, d.hidden)).reshape(o.shape)
                repeated = True
            else:
                h = h + o
            h = h + blk.mlp(blk.post_norm(h), lb, s if lb is not None else 1)
        if not repeated:
            h = h.repeat(s, 1, 1)
        return h

    def hidden(self, tokens: Tensor, lora_b: Tensor | None) -> Tensor:
        """Normed hidden states at every position [S·b, T, d] (what the head would see)."""
        return self.core.norm(self.trunk(tokens, lora_b))

    def forward(self, tokens: Tensor, loss_mask: Tensor, lora_b: Tensor) -> Tensor:
        window = target_window(loss_mask, self.max_targets)
        return self.windowed(tokens, window.positions, window.weights, lora_b)

    def target_hidden(self, tokens: Tensor, target_pos: Tensor, lora_b: Tensor) -> Tensor:
        """Normed hidden states at the K target positions of every row: [S·b·K, d], rows
        slice-major (what the LM head scores; the ``train.pte`` methods return this)."""
        s, b, t, k = self.slices, self.batch, self.length, self.max_targets
        d = self.core.dims.hidden
        h = self.trunk(tokens, lora_b).reshape(s * b * t, d)
        flat = (target_pos.repeat(s, 1) + self.row_start).reshape(s * b * k)
        return self.core.norm(torch.index_select(h, 0, flat))

    def windowed(self, tokens: Tensor, target_pos: Tensor, target_weight: Tensor,
                 lora_b: Tensor) -> Tensor:
        s, b, k = self.slices, self.batch, self.max_targets
        d = self.core.dims.hidden
        h = self.target_hidden(tokens, target_pos, lora_b).reshape(s * b, k, d)
        targets = torch.gather(tokens, 1, target_pos + 1).repeat(s, 1)  # [S·b, K]
        nll_parts = []
        for start in range(0, k, self.loss_chunk):  # static loop: bounded logits memory
            stop = min(start + self.loss_chunk, k)
            nll_parts.append(target_nll(self.core.lm_head, h[:, start:stop],
                                        targets[:, start:stop]))
        nll = torch.cat(nll_parts, dim=1) if len(nll_parts) > 1 else nll_parts[0]
        weight = target_weight.reshape(1, b * k)
        per_slice = (nll.reshape(s, b * k) * weight).sum(dim=1)
        return per_slice / target_weight.sum().clamp_min(1.0)


class TrainMethod(nn.Module):
    """What a ``train.pte`` shape method is exported from:
    ``(tokens[b,T], target_pos[b,K], lora_b[S,P]) -> hidden[S·b·K, d]``.

    The LM head and the loss are the program's separate ``head_loss`` method
    (:class:`HeadLoss`), which the runtime calls on chunks of these rows: its logits are the
    biggest tensor of a step ([rows, vocab]), and a chunk bounds them, whatever S·b·K is.
    """

    def __init__(self, fwd: TrainForward) -> None:
        super().__init__()
        self.fwd = fwd

    def forward(self, tokens: Tensor, target_pos: Tensor, lora_b: Tensor) -> Tensor:
        return self.fwd.target_hidden(tokens, target_pos, lora_b)

    def example_args(self, num_params: int) -> tuple[Tensor, Tensor, Tensor]:
        f = self.fwd
        return (torch.zeros(f.batch, f.length, dtype=torch.long),
                torch.zeros(f.batch, f.max_targets, dtype=torch.long),
                torch.zeros(f.slices, num_params))


def target_nll(lm_head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """−log p(target) under the LM head: hidden [..., d], targets [...] → [...].

    Softmax → gather → log, as XNNPACK has no log_softmax; the clamp keeps an underflowed
    probability finite."""
    probs = torch.softmax(lm_head(hidden), dim=-1)
    p = torch.gather(probs, -1, targets.unsqueeze(-1)).squeeze(-1)
    return -torch.log(p.clamp_min(1e-30))


class HeadLoss(nn.Module):
    """``(hidden[R, d], targets[R]) -> nll[R]``: the LM head and −log p(target)
    (:func:`target_nll`), R dynamic up to the bundle's ``head_rows``."""

    def __init__(self, core: Decoder) -> None:
        super().__init__()
        self.core = core

    def forward(self, hidden: Tensor, targets: Tensor) -> Tensor:
        return target_nll(self.core.lm_head, hidden, targets)

    def example_args(self, rows: int) -> tuple[Tensor, Tensor]:
        return (torch.zeros(rows, self.core.dims.hidden), torch.zeros(rows, dtype=torch.long))


class LossMethod(nn.Module):
    """One-method loss ``(tokens, target_pos, target_weight, lora_b) -> losses[S]``: the
    benchmark's forwards (bench_forward.pte), where the head stays inside the method."""

    def __init__(self, fwd: TrainForward) -> None:
        super().__init__()
        self.fwd = fwd

    def forward(self, tokens: Tensor, target_pos: Tensor, target_weight: Tensor,
                lora_b: Tensor) -> Tensor:
        return self.fwd.windowed(tokens, target_pos, target_weight, lora_b)

    def example_args(self, num_params: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f = self.fwd
        rows = 1 if not f.lora else f.slices
        return (torch.zeros(f.batch, f.length, dtype=torch.long),
                torch.zeros(f.batch, f.max_targets, dtype=torch.long),
                torch.ones(f.batch, f.max_targets), torch.zeros(rows, num_params))


class KVCache(nn.Module):
    """Per-layer key/value caches [1, max_ctx, KV, hd]: mutable buffers shared by methods."""

    def __init__(self, layers: int, max_context: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        for i in range(layers):
            self.register_buffer(f"k{i}", torch.zeros(1, max_context, kv_heads, head_dim))
            self.register_buffer(f"v{i}", torch.zeros(1, max_context, kv_heads, head_dim))

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return getattr(self, f"k{i}"), getattr(self, f"v{i}")


class InferStep(nn.Module):
    """``(tokens[1,C], start_pos[1], last[1], lora_b[1,P]) -> logits[1, vocab]``.

    Feeds C tokens at positions start_pos..start_pos+C-1, writes their keys/values into the
    cache (in place: mutable buffers that every method of the program shares) and returns the
    logits at chunk index ``last``. Attention runs over the whole fixed-size cache with a mask
    ``j <= position`` built without slicing (a symbolic slice of a fixed buffer adds guards and
    breaks delegation, DESIGN §3). Positions past the ones written are masked, so stale or
    padding entries there are never read before being overwritten.
    """

    def __init__(self, core: Decoder, cache: KVCache, *, chunk: int, max_context: int) -> None:
        super().__init__()
        self.core, self.cache = core, cache
        self.chunk, self.max_context = chunk, max_context
        cos, sin = core.rope_tables(max_context)
        self.register_buffer("cos", cos, persistent=False)  # [ctx, hd]
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("ctx_pos", torch.arange(max_context), persistent=False)
        # chunk positions repeated for the query heads that share a kv head (see attention())
        self.register_buffer("chunk_pos", torch.arange(chunk), persistent=False)
        self.register_buffer("chunk_pos_grouped", torch.arange(chunk).repeat(core.dims.groups),
                             persistent=False)

    def forward(self, tokens: Tensor, start_pos: Tensor, last: Tensor, lora_b: Tensor) -> Tensor:
        core, d = self.core, self.core.dims
        pos = start_pos + self.chunk_pos  # [C]
        cos = torch.index_select(self.cos, 0, pos)[:, None, :]  # [C, 1, hd]
        sin = torch.index_select(self.sin, 0, pos)[:, None, :]
        pos_grouped = start_pos + self.chunk_pos_grouped  # [groups·C]
        mask = torch.where(self.ctx_pos[None, :] <= pos_grouped[:, None], 0.0, NEG_INF)
        h = torch.nn.functional.embedding(tokens, core.embed)  # [1, C, d]
        for i, blk in enumerate(core.blocks):
            lb = lora_b if blk.has_lora else None
            x = blk.input_norm(h)
            q, k, v = blk.qkv(x, lb, 1, cos, sin, core.rot)
            k_cache, v_cache = self.cache.layer(i)
            k_cache.index_copy_(1, pos, k)
            v_cache.index_copy_(1, pos, v)
            o = attention(q, k_cache, v_cache, mask, core.scale, d.groups)
            h = h + blk.o_proj(o, lb, 1)
            h = h + blk.mlp(blk.post_norm(h), lb, 1)
        h = torch.index_select(h, 1, last)  # [1, 1, d]
        return core.lm_head(core.norm(h)).reshape(1, d.vocab)

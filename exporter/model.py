"""An export-friendly decoder (every family of exporter/families.py) with MP-LoRA, built
from a transformers model.

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
- Inference (:class:`exporter.infer_step.InferStep`) writes a KV cache of mutable buffers
  shared by its methods, through ExecuTorch's LLM ops (the runtime loads their kernels:
  agent/io/llm_ops.py) or, for CPUs that cannot load them, with a masked matmul.

Rows are slice-major: row ``s·b + j`` is sequence j evaluated with slice s. With LoRA only on
the last k layers, the frozen prefix runs once on the b sequences ("prefix sharing", DESIGN §3).
The first LoRA'd block (block 0 with LoRA everywhere) still reads those b shared rows, so its
frozen q/k/v projections run once too; the rows fork into S slices inside that block.

Tied input/output embeddings (``tie_word_embeddings``) stay one tensor: the LM head's weight
is the embedding parameter itself, and exporter/lower.py feeds it to the head's XNNPACK
partition at run time instead of packing a second copy into the delegate, so ``train.pte``
stores it once (its ``head_loss`` calls score many rows, which amortize the per-call packing).
``infer.pte`` keeps a packed copy of the head (:attr:`Decoder.packed_head`): a run-time weight
is repacked on every call, which made decoding 3.7x slower (52 vs 14 ms/token, vocab 32000 x
512, 2 layers), and saves no memory there (the packing workspace is as big as the matrix).
Sliding-window layers (Gemma 3) get their own additive mask and rope table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

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
    "NEG_INF", "Block", "Decoder", "HeadLoss", "LoraLinear",
    "LossMethod", "ModelDims", "RMSNorm", "TrainForward", "TrainMethod", "attention",
    "rotate_half_matrix", "target_nll",
]


class Decoder(nn.Module):
    """Weights + LoRA of the whole model; the train and infer wrappers below share it."""

    def __init__(self, hf_model: nn.Module, layout: LoraLayout, lora_a: dict[str, Tensor]) -> None:
        """Args:
            hf_model: a transformers *ForCausalLM of a supported family (float32).
            layout: which linears carry LoRA and where their Bᵀ sits in ``lora_b``.
            lora_a: PEFT ``lora_A.weight`` tensors [r, in], keyed by PEFT key (unscaled).
        """
        super().__init__()
        cfg = hf_model.config
        self.dims = dims = ModelDims(cfg)
        inner = hf_model.model
        hf_embed = inner.embed_tokens.weight
        self.embed = nn.Parameter(hf_embed.detach().to(torch.float32).clone(),
                                  requires_grad=False)
        per_layer: dict[int, dict[str, tuple]] = {}
        for e in layout:
            a = lora_a[e.peft_a_key].to(torch.float32) * layout.scaling
            per_layer.setdefault(e.layer, {})[e.target] = (a, e.offset, e.rank)
        self.blocks = nn.ModuleList(
            Block(layer, dims, per_layer.get(i, {}), i) for i, layer in enumerate(inner.layers)
        )
        self.first_lora = min(per_layer) if per_layer else len(self.blocks)
        self.norm = RMSNorm(inner.norm.weight, dims.eps, dims.norm_offset)
        head = hf_model.get_output_embeddings()
        if head.weight.data_ptr() == hf_embed.data_ptr() and head.bias is None:  # tied
            self.lm_head = nn.Linear(dims.hidden, dims.vocab, bias=False, device="meta")
            self.lm_head.weight = self.embed  # the same parameter: one tensor, stored once
            self.packed_head = frozen_linear(head)  # infer.pte's (see the module docstring)
        else:
            self.lm_head = frozen_linear(head)
        self.register_buffer("rot", rotate_half_matrix(dims.head_dim), persistent=False)
        self._rotary = inner.rotary_emb  # transformers' own: cos/sin tables for any rope type
        self.scale = dims.attn_scale
        # the layer types in a fixed order: index i names the i-th rope table / mask
        self.layer_kinds = tuple(sorted(set(dims.layer_types)))

    @property
    def tied_head(self) -> bool:
        """Whether the LM head's weight is the embedding (false once the head is quantized)."""
        return getattr(self.lm_head, "weight", None) is self.embed

    def runtime_weights(self) -> tuple[str, ...]:
        """Parameter names whose linears take the weight at run time (exporter/lower.py)."""
        return ("embed", "lm_head.weight") if self.tied_head else ()

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings [..., d] (times sqrt(d) in Gemma)."""
        h = torch.nn.functional.embedding(tokens, self.embed)
        return h if self.dims.embed_scale is None else h * self.dims.embed_scale

    def logits(self, hidden: Tensor, packed: bool = False) -> Tensor:
        """The LM head, soft-capped as ``c·tanh(z/c)`` where the config sets
        ``final_logit_softcapping`` (Gemma). ``packed``: a tied head reads its own copy of
        the weight (the infer program's, see the module docstring)."""
        head = self.packed_head if packed and self.tied_head else self.lm_head
        z = head(hidden)
        c = self.dims.final_softcap
        return z if c is None else torch.tanh(z / c) * c

    def rope_tables(self, length: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Per layer type: cos, sin [length, hd] for positions 0..length-1, from
        transformers' rotary module (Gemma 3's takes the layer type: local layers have
        their own base)."""
        pos = torch.arange(length).unsqueeze(0)
        x = self.embed[:1].unsqueeze(0)
        per_type = "layer_type" in inspect.signature(self._rotary.forward).parameters
        out = {}
        with torch.no_grad():
            for kind in self.layer_kinds:
                cos, sin = self._rotary(x, pos, kind) if per_type else self._rotary(x, pos)
                out[kind] = (cos[0].to(torch.float32).clone(), sin[0].to(torch.float32).clone())
        return out

    def register_rope(self, owner: nn.Module, length: int, shape: tuple[int, ...]) -> None:
        """Register ``cos_i``/``sin_i`` buffers (viewed as ``shape``) on ``owner``, one pair
        per layer kind (``self.layer_kinds[i]``)."""
        for i, (cos, sin) in enumerate(self.rope_tables(length).values()):
            owner.register_buffer(f"cos_{i}", cos.reshape(shape), persistent=False)
            owner.register_buffer(f"sin_{i}", sin.reshape(shape), persistent=False)

    def kind_of(self, blk: Block) -> int:
        return self.layer_kinds.index(blk.layer_type)


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
        core.register_rope(self, max_length, (max_length, 1, -1))  # cos_i, sin_i [T, 1, hd]
        g = core.dims.groups
        causal = torch.full((max_length, max_length), NEG_INF).triu(1)
        # tiled for the query heads that share a kv head (see attention())
        self.register_buffer("causal", causal.repeat(g, 1), persistent=False)
        if any(blk.sliding for blk in core.blocks):  # q attends to q-W+1..q (transformers')
            dist = torch.arange(max_length)[:, None] - torch.arange(max_length)[None, :]
            local = torch.where((dist >= 0) & (dist < core.dims.window), 0.0, NEG_INF)
            self.register_buffer("window_mask", local.repeat(g, 1), persistent=False)
        # first flat index of each of the S·b rows in the [S·b·T, d] hidden states
        row_start = torch.arange(slices * batch, dtype=torch.long)[:, None] * max_length
        self.register_buffer("row_start", row_start, persistent=False)
        self.loss_chunk = max(1, loss_chunk)

    def trunk(self, tokens: Tensor, lora_b: Tensor | None) -> Tensor:
        """Hidden states after the last block, before the final norm: [S·b, T, d]."""
        core, d = self.core, self.core.dims
        s = self.slices
        h = core.embed_tokens(tokens)  # [b, T, d]
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
            ns = s if lb is not None else 1
            kind = core.kind_of(blk)
            x = blk.input_norm(h)
            q, k, v = blk.qkv(x, lb, ns, getattr(self, f"cos_{kind}"),
                              getattr(self, f"sin_{kind}"), core.rot, shared_input=fork)
            mask = self.window_mask if blk.sliding else self.causal
            o = blk.attn_out(attention(q, k, v, mask, core.scale, d.groups), lb, ns)
            if fork:  # the shared residual broadcast over the slices (a repeat splits XNNPACK)
                h = (o.reshape(s, -1, d.hidden) + h.reshape(1, -1, d.hidden)).reshape(o.shape)
                repeated = True
            else:
                h = h + o
            h = h + blk.ffn(h, lb, ns)
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
            nll_parts.append(target_nll(self.core.logits, h[:, start:stop],
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


def target_nll(head: Callable[[Tensor], Tensor], hidden: Tensor, targets: Tensor) -> Tensor:
    """−log p(target) under the LM head (``Decoder.logits``): hidden [..., d], targets [...]
    → [...].

    Softmax → gather → log, as XNNPACK has no log_softmax; the clamp keeps an underflowed
    probability finite."""
    probs = torch.softmax(head(hidden), dim=-1)
    p = torch.gather(probs, -1, targets.unsqueeze(-1)).squeeze(-1)
    return -torch.log(p.clamp_min(1e-30))


class HeadLoss(nn.Module):
    """``(hidden[R, d], targets[R]) -> nll[R]``: the LM head and −log p(target)
    (:func:`target_nll`), R dynamic up to the bundle's ``head_rows``."""

    def __init__(self, core: Decoder) -> None:
        super().__init__()
        self.core = core

    def forward(self, hidden: Tensor, targets: Tensor) -> Tensor:
        return target_nll(self.core.logits, hidden, targets)

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

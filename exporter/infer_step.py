"""The inference program's module: one KV cache shared by ``prefill`` and ``decode``.

:class:`InferStep` is what infer.pte's methods are exported from (exporter/programs.py): a
chunk of tokens in, the logits of one of them out, its keys and values written into a cache
of mutable buffers that every method of the program shares. Attention goes through
ExecuTorch's LLM ops by default, or a masked matmul over the whole cache for CPUs that cannot
load the ops' library (``mobizo-export --attention masked``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from exporter.layers import NEG_INF, attention, cached_attention
from exporter.model import Decoder


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
    logits at chunk index ``last``. The cache write and the attention are ExecuTorch's LLM ops
    (:func:`exporter.layers.cached_attention`: ``llama::update_cache``, ``llama::custom_sdpa``),
    which take ``start_pos`` as a value: a causal layer reads only the positions written so
    far (0..start_pos+i for chunk index i), so stale or padding entries past them are never
    read before being overwritten. A sliding-window layer scores the whole cache under its
    window mask, built without slicing (a symbolic slice of a fixed buffer adds guards and
    breaks delegation, DESIGN §3).
    """

    def __init__(self, core: Decoder, cache: KVCache, *, chunk: int, max_context: int,
                 llm_ops: bool = True) -> None:
        super().__init__()
        self.core, self.cache = core, cache
        self.chunk, self.max_context, self.llm_ops = chunk, max_context, llm_ops
        core.register_rope(self, max_context, (max_context, -1))  # cos_i, sin_i [ctx, hd]
        self.sliding = any(blk.sliding for blk in core.blocks)
        self.register_buffer("ctx_pos", torch.arange(max_context), persistent=False)
        self.register_buffer("chunk_pos", torch.arange(chunk), persistent=False)
        # the masked form: chunk positions repeated for the query heads of one kv head
        self.register_buffer("chunk_pos_grouped", torch.arange(chunk).repeat(core.dims.groups),
                             persistent=False)

    def forward(self, tokens: Tensor, start_pos: Tensor, last: Tensor, lora_b: Tensor) -> Tensor:
        if not self.llm_ops:
            return self._masked_forward(tokens, start_pos, last, lora_b)
        core, d = self.core, self.core.dims
        # the first position as a value: the cache ops take it so (a SymInt when exported)
        start = start_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + self.chunk <= self.max_context)
        pos = start_pos + self.chunk_pos  # [C]
        rope = [(torch.index_select(getattr(self, f"cos_{i}"), 0, pos)[:, None, :],  # [C,1,hd]
                 torch.index_select(getattr(self, f"sin_{i}"), 0, pos)[:, None, :])
                for i in range(len(core.layer_kinds))]
        window_mask = None
        if self.sliding:  # q attends to q-W+1..q (transformers'), [C, ctx]
            seen = self.ctx_pos[None, :] <= pos[:, None]
            near = self.ctx_pos[None, :] > pos[:, None] - d.window
            window_mask = torch.where(seen & near, 0.0, NEG_INF)
        h = core.embed_tokens(tokens)  # [1, C, d]
        for i, blk in enumerate(core.blocks):
            lb = lora_b if blk.has_lora else None
            cos, sin = rope[core.kind_of(blk)]
            x = blk.input_norm(h)
            q, k, v = blk.qkv(x, lb, 1, cos, sin, core.rot)
            k_cache, v_cache = self.cache.layer(i)
            o = cached_attention(q, k, v, k_cache, v_cache, start, core.scale,
                                 window_mask if blk.sliding else None)
            h = h + blk.attn_out(o, lb, 1)
            h = h + blk.ffn(h, lb, 1)
        return self._head(h, last)

    def _head(self, h: Tensor, last: Tensor) -> Tensor:
        if self.chunk > 1:  # one token is its own last (no op between the trunk and the head)
            h = torch.index_select(h, 1, last)  # [1, 1, d]
        return self.core.logits(self.core.norm(h), packed=True).reshape(1, self.core.dims.vocab)

    def _masked_forward(self, tokens: Tensor, start_pos: Tensor, last: Tensor,
                        lora_b: Tensor) -> Tensor:
        """The form without ExecuTorch's LLM ops (``--attention masked``), for CPUs that cannot
        load their library (ARMv8.0: the Raspberry Pi 4's Cortex-A72; agent/io/llm_ops.py):
        attention over the whole fixed-size cache with a mask ``j <= position`` built without
        slicing (a symbolic slice of a fixed buffer adds guards and breaks delegation, DESIGN
        §3), so positions past the ones written are never read before being overwritten."""
        core, d = self.core, self.core.dims
        pos = start_pos + self.chunk_pos  # [C]
        rope = [(torch.index_select(getattr(self, f"cos_{i}"), 0, pos)[:, None, :],  # [C,1,hd]
                 torch.index_select(getattr(self, f"sin_{i}"), 0, pos)[:, None, :])
                for i in range(len(core.layer_kinds))]
        pos_grouped = start_pos + self.chunk_pos_grouped  # [groups·C]
        seen = self.ctx_pos[None, :] <= pos_grouped[:, None]
        mask = torch.where(seen, 0.0, NEG_INF)
        window_mask = mask
        if self.sliding:  # and within the window: q attends to q-W+1..q (transformers')
            near = self.ctx_pos[None, :] > pos_grouped[:, None] - d.window
            window_mask = torch.where(seen & near, 0.0, NEG_INF)
        h = core.embed_tokens(tokens)  # [1, C, d]
        for i, blk in enumerate(core.blocks):
            lb = lora_b if blk.has_lora else None
            cos, sin = rope[core.kind_of(blk)]
            q, k, v = blk.qkv(blk.input_norm(h), lb, 1, cos, sin, core.rot)
            k_cache, v_cache = self.cache.layer(i)
            k_cache.index_copy_(1, pos, k)
            v_cache.index_copy_(1, pos, v)
            o = attention(q, k_cache, v_cache, window_mask if blk.sliding else mask,
                          core.scale, d.groups)
            h = h + blk.attn_out(o, lb, 1)
            h = h + blk.ffn(h, lb, 1)
        return self._head(h, last)

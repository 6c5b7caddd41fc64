"""What each program of a bundle is lowered from: its methods, built from one decoder.

``train.pte`` holds one method per static (S, b) shape plus the ``head_loss`` method;
``infer.pte`` holds ``prefill`` and ``decode`` over one shared KV cache. Both keep their frozen
weights in the bundle's one ``weights.ptd`` (exporter/weights_file.py): each weight is stored
once. They stay two programs because the runtime sizes one activation arena per program to
its largest method (the train methods' and ``head_loss``'s [rows, vocab] logits would sit in
the service, the KV cache in the trainer). A ``--bench-forward`` bundle adds two
benchmark-only programs beside them (see ``BENCH_FORWARD_PROGRAM``), each with its own weights.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from agent.core.bundle import (
    LONG_DECODE_METHOD,
    LONG_PREFILL_METHOD,
    WEIGHTS_FILE,
    BundleManifest,
    WeightsFileSpec,
)
from exporter.infer_step import InferStep, KVCache
from exporter.lower import data_file_of, lower_methods
from exporter.model import (
    Decoder,
    HeadLoss,
    LossMethod,
    TrainForward,
    TrainMethod,
)
from exporter.options import ExportOptions
from exporter.weights_file import merge_data_files

log = logging.getLogger(__name__)

# name -> (module, example_args[, dynamic_shapes]), as exporter.lower.lower_methods takes them
Methods = dict[str, tuple[Any, ...]]

# Benchmark-only programs of a --bench-forward bundle, apart from train.pte so that train.pte is
# exactly a product bundle's: the runtime sizes one shared activation arena per program to its
# largest method, so a method kept beside bigger ones would be measured with their arena.
BENCH_FORWARD_PROGRAM = "bench_forward.pte"  # the t_fwd forwards over max(slices)·b rows
BENCH_INFER_PROGRAM = "bench_infer.pte"  # the S = 1 method alone: inference memory of b rows


def train_method_name(slices: int, batch: int) -> str:
    return f"train_s{slices}_b{batch}"


def forward_method_name(rows: int) -> str:
    """Bench-only plain forward over ``rows`` sequences with no LoRA (merged-weights speed)."""
    return f"forward_n{rows}"


def adapter_forward_method_name(rows: int) -> str:
    """Bench-only forward over ``rows`` sequences with one adapter for all of them, unmerged:
    the inference program's way of running an adapter (its B is a runtime input)."""
    return f"forward_adapter_n{rows}"


def _forward(core: Decoder, opts: ExportOptions, slices: int, batch: int,
             lora: bool = True) -> TrainForward:
    return TrainForward(core, slices=slices, batch=batch, max_length=opts.max_length,
                        max_targets=opts.target_window(), loss_chunk=opts.loss_chunk, lora=lora)


def train_methods(core: Decoder, opts: ExportOptions, manifest: BundleManifest,
                  shapes: list[tuple[int, int]]) -> Methods:
    """One method per (S, b) in ``shapes``, then the head-and-loss method (dynamic rows)."""
    p = manifest.lora.num_params
    methods: Methods = {}
    for s, b in shapes:
        m = TrainMethod(_forward(core, opts, s, b))
        methods[train_method_name(s, b)] = (m, m.example_args(p))
    head = HeadLoss(core)
    rows = torch.export.Dim("rows", min=1, max=opts.head_rows)
    methods[manifest.train.head_method] = (head, head.example_args(opts.head_rows),
                                           ({0: rows}, {0: rows}))
    return methods


def bench_forward_methods(core: Decoder, opts: ExportOptions, num_params: int) -> Methods:
    """The benchmark's plain and one-adapter forwards over max(slices)·max(batch) rows."""
    rows = max(opts.slices) * max(opts.batch)
    bench: Methods = {}
    for name, fwd in ((forward_method_name(rows), _forward(core, opts, rows, 1, lora=False)),
                      (adapter_forward_method_name(rows), _forward(core, opts, 1, rows))):
        m = LossMethod(fwd)
        bench[name] = (m, m.example_args(num_params))
    return bench


LONG_PREFILL, LONG_DECODE = LONG_PREFILL_METHOD, LONG_DECODE_METHOD


def infer_method_names(attention: str) -> tuple[str, ...]:
    """The infer program's methods: with the LLM ops, also ``prefill_long`` and
    ``decode_long``, the same steps attended with XNNPACK's matmuls over the whole cache (the
    masked form). ExecuTorch's ``custom_sdpa`` multiplies with a scalar GEMM, so its cost
    grows with the context: on the 110M shape (8da8w) a 32-token chunk took 48 / 55 / 131 /
    162 ms at 64 / 256 / 600 / 960 tokens of context, the masked form a flat 56-70 ms; a
    decoded token (fp32) 22.7 / 28.7 / 41.4 / 37.7 ms at 64 / 256 / 768 / 960, the masked
    form a flat 30-32 ms. The runtime picks them far enough into the context
    (agent/io/runtime.py); all of them write the same KV cache."""
    if attention == "llm-ops":
        return ("prefill", "decode", LONG_PREFILL, LONG_DECODE)
    return ("prefill", "decode")


def infer_methods(core: Decoder, opts: ExportOptions, manifest: BundleManifest) -> Methods:
    """``prefill`` (a chunk of tokens) and ``decode`` (one token) over one KV cache, and
    ``prefill_long`` / ``decode_long`` where the LLM ops attend (:func:`infer_method_names`)."""
    shape, p = manifest.model, manifest.lora.num_params
    cache = KVCache(shape.num_layers, opts.max_context, shape.num_kv_heads, shape.head_dim)
    llm_ops = opts.attention == "llm-ops"
    steps = {"prefill": (opts.prefill_chunk, llm_ops), "decode": (1, llm_ops),
             LONG_PREFILL: (opts.prefill_chunk, False), LONG_DECODE: (1, False)}
    infer: Methods = {}
    for name in infer_method_names(opts.attention):
        chunk, ops = steps[name]
        infer[name] = (
            InferStep(core, cache, chunk=chunk, max_context=opts.max_context, llm_ops=ops),
            (torch.zeros(1, chunk, dtype=torch.long), torch.tensor([0]), torch.tensor([0]),
             torch.zeros(1, p)),
        )
    return infer


WEIGHTS_TAG = "weights"  # the data files' tag while lowering (exporter/lower.py)


def lower_programs(core: Decoder, opts: ExportOptions, manifest: BundleManifest,
                   staging: Path) -> WeightsFileSpec:
    """Lower every program of ``manifest`` into ``staging`` (train, bench, then infer) and
    merge their weights into ``weights.ptd``; returns its manifest entry."""
    # a tied embedding is the LM head's weight: one input of train.pte's head (lower.py)
    lower = partial(lower_methods, backend=opts.backend, runtime_weights=core.runtime_weights())
    methods = train_methods(core, opts, manifest, opts.train_shapes())
    log.info("lowering train program: %s", ", ".join(methods))
    train_pte = staging / manifest.train.program
    lower(methods, train_pte, weights_tag=WEIGHTS_TAG)
    programs = [train_pte]
    if opts.bench_forward:
        bench = bench_forward_methods(core, opts, manifest.lora.num_params)
        log.info("lowering benchmark forwards: %s", ", ".join(bench))
        lower(bench, staging / BENCH_FORWARD_PROGRAM)
        lower(train_methods(core, opts, manifest, [(1, b) for b in opts.batch]),
              staging / BENCH_INFER_PROGRAM)
    if manifest.infer is not None:
        infer = infer_methods(core, opts, manifest)
        log.info("lowering infer program: %s (chunk %d)", ", ".join(infer), opts.prefill_chunk)
        # no run-time weights: a tied head is packed once here, not per token (model.py)
        infer_pte = staging / manifest.infer.program
        lower_methods(infer, infer_pte, backend=opts.backend, share_mutable_buffers=True,
                      weights_tag=WEIGHTS_TAG)
        programs.append(infer_pte)
    parts = [p for p in (data_file_of(pte, WEIGHTS_TAG) for pte in programs) if p.is_file()]
    spec = merge_data_files(parts, staging / WEIGHTS_FILE)
    for part in parts:
        part.unlink()
    log.info("wrote %s (%d bytes): the weights of %s, each once", WEIGHTS_FILE, spec.size,
             ", ".join(p.name for p in programs))
    return spec

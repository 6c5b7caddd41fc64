"""torch.export + ExecuTorch lowering of the train and infer programs.

One method per static shape (DESIGN §3: dynamic batch dimensions broke XNNPACK delegation
into 165 partitions; static shapes gave 2). All methods of a program are lowered together, so
XNNPACK's named data store keeps one copy of each weight in the file (constants are keyed by
content hash) no matter how many methods use it.

A weight that two ops share across the delegate boundary (a tied embedding: the ``embedding``
lookup runs outside XNNPACK, the LM head inside) would be stored twice: once as the program's
constant, once packed into the delegate. ``runtime_weights`` names such parameters; their
fp32 linears get a partition of their own that takes the weight as a run-time input (XNNPACK
packs it per call), so the program keeps the one copy the lookup reads. That is worth it
where a call scores many rows (train.pte's ``head_loss``), not for one decoded token
(exporter/model.py).

``weights_tag``: the program keeps its frozen weights out of the ``.pte``, in a data file
``<out>.<tag>.ptd`` beside it (ExecuTorch's named data: delegated constants keyed by the
sha256 of their bytes, other parameters by name). exporter/weights_file.py merges the data
files of a bundle's programs into its one ``weights.ptd``, where equal bytes are stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _partitioners(backend: str, runtime_weights: Sequence[str] = ()) -> list:
    if backend == "portable":
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if not runtime_weights:
        return [XnnpackPartitioner()]
    shared = tuple(runtime_weights)

    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig

    class RuntimeWeightLinear(LinearConfig):
        """Only fp32 linears whose weight is one of ``shared`` (by parameter name)."""

        def check_constraints(self, node: torch.fx.Node, ep: Any) -> bool:
            weight = node.args[1] if len(node.args) > 1 else None
            name = ep.graph_signature.inputs_to_parameters.get(getattr(weight, "name", ""), "")
            if not any(name == n or name.endswith("." + n) for n in shared):
                return False
            return bool(super().check_constraints(node, ep))

    # first: those linears, weight left out of the partition (an input at run time); then
    # everything else as usual
    return [XnnpackPartitioner(configs=[RuntimeWeightLinear],
                               force_non_static_weights_for_f32_linear=True),
            XnnpackPartitioner()]


def _inplace_cache_writes() -> frozenset:
    from executorch.exir.dialects._ops import ops

    return frozenset({ops.edge.aten.index_copy.default})


def _shared_buffer_planning(alloc_graph_input: bool) -> Any:
    """ExecuTorch's memory planning with the mutable buffers (the KV cache) shared by all
    methods, without the hole it leaves in the activation arena (executorch 1.5).

    The planner aliases an in-place write (``index_put_`` on a cache buffer) onto the buffer
    while it walks the graph, but the output node still holds the write's own spec (given it
    before the write was reinplaced), so that stale spec is planned in arena 1 as if it were a
    cache-sized activation: a hole as big as the cache, which the runtime zero-fills and keeps
    resident (72 MB at 110M). Aliasing those writes up front makes the output's entries the
    buffers' own specs, which the planner leaves to the shared arena 2.
    """
    from executorch.exir.memory_planning import _alias_inplace_result_specs, _is_inplace_node
    from executorch.exir.passes import MemoryPlanningPass

    class SharedBufferPlanning(MemoryPlanningPass):
        def run(self, graph_module: torch.fx.GraphModule, graph_signature: Any = None) -> Any:
            stale: dict[int, Any] = {}
            for node in graph_module.graph.nodes:
                if _is_inplace_node(node):
                    before = node.meta.get("spec")
                    _alias_inplace_result_specs(node)
                    if node.meta.get("spec") is not before:
                        stale[id(before)] = node.meta["spec"]
                elif node.op == "output" and isinstance(node.meta.get("spec"), tuple | list):
                    node.meta["spec"] = type(node.meta["spec"])(
                        stale.get(id(spec), spec) for spec in node.meta["spec"])
            return super().run(graph_module, graph_signature)

    return SharedBufferPlanning(alloc_graph_input=alloc_graph_input, share_mutable_buffers=True)


def _weights_tagger(tag: str) -> Callable[[torch.fx.GraphModule], Any]:
    """A pass that marks every placeholder of an edge graph so that XNNPACK stores the
    constant data it delegates under ``tag``.

    Runs after ``to_edge``, before partitioning: a quantized weight (a torchao tensor subclass)
    is unwrapped into new placeholders by then, which a mark set on the exported parameter
    would miss. Inputs and mutable buffers carry the mark unread (the delegate stores no data
    for them); constants' keys are content hashes, so two programs' entries never clash.
    """
    from executorch.exir.pass_base import PassResult

    def tag_placeholders(gm: torch.fx.GraphModule) -> Any:
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag
        return PassResult(gm, True)

    return tag_placeholders


class _QuietNamedData(logging.Filter):
    """Drops XNNPACK's one INFO line per externalized constant (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Adding constant data with name")


def data_file_of(out: Path, tag: str) -> Path:
    """Where :func:`lower_methods` writes the data file of program ``out`` for ``tag``."""
    return out.with_name(f"{out.name}.{tag}.ptd")


def lower_methods(methods: Mapping[str, tuple], out: Path, *, backend: str,
                  share_mutable_buffers: bool = False,
                  runtime_weights: Sequence[str] = (),
                  weights_tag: str | None = None) -> dict[str, int]:
    """Export each ``name -> (module, example_args[, dynamic_shapes])`` and write one ``.pte``.

    Methods are static unless given ``dynamic_shapes`` (torch.export's argument): only the
    head-loss method is dynamic, in its row count, which XNNPACK's linear and softmax take.

    ``runtime_weights``: parameter names (or dotted suffixes) whose fp32 linears read the
    weight at run time (see the module docstring).

    ``weights_tag``: write the frozen weights to :func:`data_file_of` ``(out, weights_tag)``
    instead of into the ``.pte`` (see the module docstring).

    Returns the number of delegate calls per method (a regression guard: a delegation break
    shows up as a jump from ~1-2 to dozens).
    """
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    eps = {}
    for name, (module, args, *dynamic) in methods.items():
        with torch.no_grad():
            eps[name] = torch.export.export(module.eval(), args, strict=False,
                                            dynamic_shapes=dynamic[0] if dynamic else None)
    quiet = _QuietNamedData()
    logging.getLogger().addFilter(quiet)
    try:
        edge = to_edge_transform_and_lower(
            eps, partitioner=_partitioners(backend, runtime_weights),
            transform_passes=[_weights_tagger(weights_tag)] if weights_tag else None)
    finally:
        logging.getLogger().removeFilter(quiet)
    delegates = {}
    for name in methods:
        gm = edge.exported_program(name).graph_module
        delegates[name] = sum(
            1 for n in gm.graph.nodes
            if n.op == "call_function" and "executorch_call_delegate" in str(n.target)
        )
    # Inputs stay out of the arena: the runtime then borrows the caller's tensors instead of
    # copying them in on every call. A P-RGE step's B stack is S·P floats (97 MB at
    # q·b = 16 on the 110M shape), and generation would copy the adapter on every token.
    planning = (_shared_buffer_planning(alloc_graph_input=False) if share_mutable_buffers
                else MemoryPlanningPass(alloc_graph_input=False))
    # Parameters not delegated (the embedding table read by the lookup) go to the data file
    # too, keyed by their name; small buffers (rope tables, masks) stay in the program.
    external = (None if weights_tag is None
                else lambda node: weights_tag if node.name.startswith("p_") else None)
    prog = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, memory_planning_pass=planning,
        external_constants=external or False,
        # A KV cache write (index_copy_ on a mutable buffer) is functionalized into a copy of
        # the whole cache per layer, all alive until the write-back at the end: as much
        # arena as the cache again, and a cache-sized memcpy per layer and token. Rewritten
        # in place, the write lands in the buffer itself.
        reinplace_extra_ops=_inplace_cache_writes() if share_mutable_buffers else None,
    ))
    out.write_bytes(prog.buffer)
    if weights_tag is not None:
        data = prog._tensor_data or {}  # written by to_executorch; no public accessor in 1.5
        extra = sorted(set(data) - {weights_tag})
        if extra:
            raise RuntimeError(f"lowering {out.name} produced data files {extra} besides "
                               f"{weights_tag!r}")
        if weights_tag in data:  # none where no parameter stayed (nothing to write)
            data_file_of(out, weights_tag).write_bytes(bytes(data[weights_tag]))
    log.info("wrote %s (%d bytes), delegate calls per method: %s", out, out.stat().st_size,
             delegates)
    return delegates

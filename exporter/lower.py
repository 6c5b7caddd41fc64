"""torch.export + ExecuTorch lowering of the train and infer programs.

One method per static shape (DESIGN §3: dynamic batch dimensions broke XNNPACK delegation
into 165 partitions; static shapes gave 2). All methods of a program are lowered together, so
XNNPACK's named data store keeps one copy of each weight in the file (constants are keyed by
content hash) no matter how many methods use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _partitioners(backend: str) -> list:
    if backend == "portable":
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


def lower_methods(methods: Mapping[str, tuple], out: Path, *, backend: str,
                  share_mutable_buffers: bool = False) -> dict[str, int]:
    """Export each ``name -> (module, example_args[, dynamic_shapes])`` and write one ``.pte``.

    Methods are static unless given ``dynamic_shapes`` (torch.export's argument): only the
    head-loss method is dynamic, in its row count, which XNNPACK's linear and softmax take.

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
    edge = to_edge_transform_and_lower(eps, partitioner=_partitioners(backend))
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
    planning = MemoryPlanningPass(alloc_graph_input=False,
                                  share_mutable_buffers=share_mutable_buffers)
    prog = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, memory_planning_pass=planning,
    ))
    out.write_bytes(prog.buffer)
    log.info("wrote %s (%d bytes), delegate calls per method: %s", out, out.stat().st_size,
             delegates)
    return delegates

"""The infer program's memory plan: the shared KV cache once (arena 2), no hole for it in the
activation arena (arena 1), which the runtime would zero-fill and keep resident."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from agent.io.bundle_files import read_manifest
from agent.io.pybindings import load_program
from exporter.lower import lower_methods

pytestmark = pytest.mark.runtime

CACHE = (1, 256, 4, 16)  # 64 KiB of fp32: far bigger than anything else the methods hold


class _Cache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(CACHE))


class _Write(nn.Module):
    """Writes ``x`` at positions ``pos`` of the shared cache in place (as InferStep does) and
    returns a small reduction of the whole cache."""

    def __init__(self, cache: _Cache) -> None:
        super().__init__()
        self.cache = cache

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        self.cache.k.index_copy_(1, pos, x)
        return self.cache.k.sum(dim=1)


def _arenas(pte: Path) -> dict[str, list[int]]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte.read_bytes()).program
    return {plan.name: list(plan.non_const_buffer_sizes) for plan in program.execution_plan}


def test_a_shared_cache_leaves_no_hole_in_the_activation_arena(tmp_path: Path) -> None:
    cache = _Cache()
    methods = {f"write{c}": (_Write(cache), (torch.zeros(1, c, 4, 16), torch.arange(c)))
               for c in (1, 2)}
    pte = tmp_path / "p.pte"
    lower_methods(methods, pte, backend="portable", share_mutable_buffers=True)
    cache_bytes = torch.zeros(CACHE).numel() * 4
    for name, sizes in _arenas(pte).items():
        assert sizes[2] == cache_bytes, (name, sizes)  # the cache, once, shared
        assert sizes[1] < cache_bytes // 4, (name, sizes)  # activations only

    # the methods still write the one cache: write2 at 0..1, then write1 at 5
    program = load_program(str(pte))
    a, b = torch.randn(1, 2, 4, 16), torch.randn(1, 1, 4, 16)
    program.load_method("write2")([a, torch.arange(2)])
    got = program.load_method("write1")([b, torch.tensor([5])])[0]
    torch.testing.assert_close(got, a.sum(dim=1) + b.sum(dim=1))


def test_the_starter_infer_program_has_no_cache_sized_hole(starter_bundle: Path) -> None:
    m = read_manifest(starter_bundle)
    assert m.infer is not None
    shape = m.model
    cache_bytes = 2 * shape.num_layers * m.infer.max_context * shape.num_kv_heads * \
        shape.head_dim * 4
    for name, sizes in _arenas(starter_bundle / m.infer.program).items():
        assert sizes[2] >= cache_bytes, (name, sizes)
        # one layer's cache is the most a step needs beside it (an attention's operands)
        assert sizes[1] < cache_bytes, (name, sizes)

"""ExecuTorch's LLM kernels are registered in the runtime the service loads programs with
(agent/io/llm_ops.py): the infer program's KV-cache write and attention are these ops."""

from __future__ import annotations

from agent.io.llm_ops import library_path, load_llm_ops, registered_llm_ops
from agent.io.pybindings import pybindings


def test_the_wheel_ships_the_llm_ops_library():
    assert library_path(pybindings()).is_file()


def test_loading_registers_the_cache_and_attention_kernels():
    c = pybindings()
    assert load_llm_ops(c) is None
    assert load_llm_ops(c) is None  # once per process; a second call is a no-op
    assert {"llama::update_cache.out", "llama::custom_sdpa.out"} <= set(registered_llm_ops(c))

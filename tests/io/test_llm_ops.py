"""ExecuTorch's LLM kernels are registered in the runtime the service loads programs with
(agent/io/llm_ops.py): the infer program's KV-cache write and attention are these ops."""

from __future__ import annotations

from pathlib import Path

from agent.core.bundle_reexport import reexport_command
from agent.io.llm_ops import cpu_problem, library_path, load_llm_ops, registered_llm_ops
from agent.io.pybindings import pybindings


def test_the_wheel_ships_the_llm_ops_library():
    assert library_path(pybindings()).is_file()


def test_loading_registers_the_cache_and_attention_kernels():
    c = pybindings()
    assert load_llm_ops(c) is None
    assert load_llm_ops(c) is None  # once per process; a second call is a no-op
    assert {"llama::update_cache.out", "llama::custom_sdpa.out"} <= set(registered_llm_ops(c))


def test_an_armv8_0_core_does_not_load_the_library_and_is_told_why():
    # the Arm build uses LSE atomics (ARMv8.1) in code its load runs: SIGILL on a Cortex-A72
    # (seen under qemu, tests/platform); the kernel's AT_HWCAP is the hardware edge here
    problem = cpu_problem("aarch64", hwcap=0x8FB)  # qemu -cpu cortex-a72's HWCAP
    assert problem is not None and "--attention masked" in problem
    assert cpu_problem("aarch64", hwcap=0x119FFB) is None  # cortex-a76: atomics (bit 8)
    assert cpu_problem("x86_64") is None


def test_the_reexport_command_carries_the_attention_form():
    raw = {"base": {"source": "preset:starter seed=0"},
           "infer": {"max_context": 128, "prefill_chunk": 16, "attention": "masked"}}
    assert "--attention masked" in reexport_command(raw, Path("b"))
    raw["infer"]["attention"] = "llm-ops"  # the default is not repeated
    assert "--attention" not in reexport_command(raw, Path("b"))

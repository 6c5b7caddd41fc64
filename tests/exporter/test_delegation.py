"""The train methods lower to one XNNPACK partition for the trunk (plus the final norm), and
every family's programs keep a small, fixed number of partitions per method.

Every op XNNPACK does not take splits the graph: the partitions' inputs and outputs then go
through the ExecuTorch arena, and the op itself runs on the ~10x slower portable kernels
(shared/DESIGN.md §3). The fork of the first LoRA'd block once made it three (a `repeat`),
then five at b = 1 (a permuted tensor traced into RoPE's matmul became expand + bmm).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.checkpoint import inspect_checkpoint, load_model
from exporter.lora_init import init_lora_a
from exporter.lower import lower_methods
from exporter.model import Decoder, TrainForward, TrainMethod
from tests.exporter.test_model import _layout
from tests.exporter.tiny import FAMILY_CASES, make_tiny_checkpoint


@pytest.mark.parametrize(("layers", "batch"), [([0, 1], 1), ([0, 1], 2), ([1], 2)],
                         ids=["all-b1", "all-b2", "last-1-b2"])
def test_train_method_is_two_partitions(tmp_path, layers, batch):
    hf = load_model(inspect_checkpoint(make_tiny_checkpoint("llama", tmp_path / "ckpt")))
    layout = _layout(hf, layers)
    method = TrainMethod(TrainForward(Decoder(hf, layout, init_lora_a(layout, 0)), slices=4,
                                      batch=batch, max_length=16, max_targets=8))
    delegates = lower_methods({"train": (method, method.example_args(layout.num_params))},
                              tmp_path / "train.pte", backend="xnnpack")
    assert delegates == {"train": 2}


def delegate_calls(program: Path) -> dict[str, int]:
    """XNNPACK delegate calls per method of an exported ``.pte`` (read from the file)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(program.read_bytes())
    prog = getattr(prog, "program", prog)
    return {plan.name: sum(1 for chain in plan.chains for ins in chain.instructions
                           if type(ins.instr_args).__name__ == "DelegateCall")
            for plan in prog.execution_plan}


# Per method of every family's test bundle: the trunk and the final norm of a train method;
# the head and the loss of head_loss (XNNPACK has no gather); in prefill/decode, partitions
# around each layer's cache write and attention (ExecuTorch's llama::update_cache and
# llama::custom_sdpa, outside XNNPACK), and prefill's pick of the last row before the head.
# A tied head in head_loss is one partition more (its weight is a run-time input,
# exporter/lower.py). prefill_long and decode_long (the masked form, for positions deep in
# the context) have partitions around each layer's in-place cache write (index_copy) instead.
DELEGATES = {"train_s1_b2": 2, "train_s3_b2": 2, "head_loss": 2, "prefill": 4, "decode": 3,
             "prefill_long": 4, "decode_long": 3}
TIED_EXTRA = {"head_loss": 1}


@pytest.mark.runtime
def test_family_programs_stay_delegated(family_bundle):
    case, bundle = family_bundle
    counts = delegate_calls(bundle / "train.pte") | delegate_calls(bundle / "infer.pte")
    tied = FAMILY_CASES[case][1].get("tie_word_embeddings", False)
    assert counts == {m: n + (TIED_EXTRA.get(m, 0) if tied else 0)
                      for m, n in DELEGATES.items()}


def operators(program: Path) -> dict[str, set[str]]:
    """The operators (``namespace::name``) each method of an exported ``.pte`` calls outside
    its delegates (read from the file)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(program.read_bytes())
    prog = getattr(prog, "program", prog)
    return {plan.name: {op.name for op in plan.operators} for plan in prog.execution_plan}


@pytest.mark.runtime
def test_infer_methods_attend_through_the_llm_ops(family_bundle):
    """Each layer's cache write and attention are ExecuTorch's LLM ops (exporter/layers.py
    ``cached_attention``): no whole-cache transposes or masked matmuls over the context;
    except ``prefill_long`` and ``decode_long``, which are that masked form on purpose (its
    cost does not grow with the context: exporter/programs.py ``infer_method_names``) and
    call no LLM op."""
    _, bundle = family_bundle
    methods = operators(bundle / "infer.pte")
    assert set(methods) == {"prefill", "decode", "prefill_long", "decode_long"}
    for method, ops in methods.items():
        assert "aten::index_put" not in ops, method
        if method.endswith("_long"):
            assert not any(op.startswith("llama::") for op in ops), ops
            assert "aten::index_put_" in ops, ops  # the cache write, in place
        else:
            assert {"llama::update_cache", "llama::custom_sdpa"} <= ops, method


def test_the_masked_infer_form_calls_no_llm_ops_and_runs(tmp_path):
    """``--attention masked`` (ARMv8.0 boards, which cannot load the LLM ops library): the
    infer methods lower without any ``llama::`` op and the runtime gives eager's logits."""
    import torch

    from agent.io.pybindings import load_program
    from exporter.infer_step import InferStep, KVCache

    hf = load_model(inspect_checkpoint(make_tiny_checkpoint("llama", tmp_path / "ckpt")))
    layout = _layout(hf, [0, 1])
    core = Decoder(hf, layout, init_lora_a(layout, 0))
    c = hf.config
    cache = KVCache(c.num_hidden_layers, 32, c.num_key_value_heads,
                    c.hidden_size // c.num_attention_heads)
    row = torch.randn(1, layout.num_params) * 0.1
    methods = {name: (InferStep(core, cache, chunk=chunk, max_context=32, llm_ops=False),
                      (torch.zeros(1, chunk, dtype=torch.long), torch.tensor([0]),
                       torch.tensor([0]), torch.zeros(1, layout.num_params)))
               for name, chunk in (("prefill", 8), ("decode", 1))}
    lower_methods(methods, tmp_path / "infer.pte", backend="xnnpack",
                  share_mutable_buffers=True)
    for method, ops in operators(tmp_path / "infer.pte").items():
        assert not any(op.startswith("llama::") for op in ops), (method, ops)
    ids = torch.randint(0, c.vocab_size, (1, 8))
    args = (ids, torch.tensor([0]), torch.tensor([7]), row)
    program = load_program(str(tmp_path / "infer.pte"))
    got = program.load_method("prefill")(list(args))[0]
    with torch.no_grad():
        want = methods["prefill"][0](*args)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

"""Quantized base models (issue 8): 8da8w / 8da4w base linears under an fp32 LoRA path.

Eager tests (seconds) check what gets quantized and how faithful the projected gradients stay;
the export tests use tiny Llama bundles exported once per source version
(tests/exporter/conftest.py) and check the programs against the eager model quantized the same
way, that a quantized bundle trains and serves, and that adapters do not cross schemes.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agent.core import zo
from agent.core.bundle import lora_layout_of
from agent.core.quant_guard import epsilon_warning
from agent.errors import ExportError
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram
from exporter.lora_init import init_lora_a
from exporter.model import Decoder, TrainForward
from exporter.quantize import (
    HEAD_SCHEME,
    QUANT_PROBE_ATOL,
    base_linear_names,
    check_scheme,
    probe_quantized,
    quantize_base,
)
from exporter.reference import load_base_model, load_lora_a
from tests.exporter.tiny import make_tiny_checkpoint

EPS = 1e-2
# Correlation of g_i with the fp32 eager model's at ε = 1e-2, q = 24 directions, tiny Llama
# (hidden 64, 2 layers, rank 4). Measured 15:50 UTC 2026-11-28: 8da8w 0.9998, 8da4w 0.995
# (eager, random weights: int4 hurts far less here than the 0.5 seen on a trained 134M model).
MIN_CORR = {"8da8w": 0.99, "8da4w": 0.95}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from exporter.checkpoint import inspect_checkpoint, load_model

    ckpt = make_tiny_checkpoint("llama", tmp_path_factory.mktemp("q") / "llama")
    return load_model(inspect_checkpoint(ckpt))


def _layout(hf):
    from agent.core.lora_layout import CANONICAL_TARGETS, LoraLayout

    c = hf.config
    h, i, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * (
        c.hidden_size // c.num_attention_heads)
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return LoraLayout.build(layer_dims=dims, layers=tuple(range(c.num_hidden_layers)),
                            targets=CANONICAL_TARGETS, rank=4, alpha=8.0)


def _grads(fwd: TrainForward | TrainProgram, num_params: int, *, q: int = 24,
           seed: int = 0) -> torch.Tensor:
    """g_i = (L(B + εz_i) − L(B − εz_i)) / 2ε for q seeded directions (slices=2, batch=1)."""
    gen = torch.Generator().manual_seed(seed)
    t = fwd.max_length if isinstance(fwd, TrainProgram) else fwd.length
    tokens = torch.randint(0, 256, (1, t), generator=gen)
    mask = torch.ones(1, t)
    b0 = torch.randn(num_params, generator=gen) * 0.02
    out = []
    with torch.no_grad():
        for _ in range(q):
            z = torch.randn(num_params, generator=gen)
            rows = torch.stack([b0 + EPS * z, b0 - EPS * z])
            losses = fwd.losses(tokens, mask, rows) if isinstance(fwd, TrainProgram) else fwd(
                tokens, mask, rows)
            out.append(float(losses[0] - losses[1]) / (2 * EPS))
    return torch.tensor(out)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# --- eager: what is quantized, how faithful it stays ------------------------------------------

@pytest.mark.parametrize("scheme", ["8da8w", "8da4w"])
def test_base_linears_and_lm_head_are_quantized(tiny_hf, scheme):
    layout = _layout(tiny_hf)
    core = Decoder(tiny_hf, layout, init_lora_a(layout, 0))
    names = base_linear_names(core)
    assert len(names) == 7 * tiny_hf.config.num_hidden_layers
    assert quantize_base(core, scheme) == len(names) + 1  # + the LM head
    weight_dtype = {"8da8w": torch.int8, "8da4w": torch.int4}
    for name in names:
        w = core.get_submodule(name).weight
        assert type(w).__name__.startswith("Intx") and w.target_dtype == weight_dtype[scheme]
    head = core.lm_head.weight
    assert type(head).__name__.startswith("Intx")
    assert head.target_dtype == weight_dtype[HEAD_SCHEME[scheme]]
    # the LoRA path, embeddings and norms stay plain fp32
    for name, mod in core.named_modules():
        if name.endswith("lora_a"):
            assert type(mod.weight) is nn.Parameter and mod.weight.dtype == torch.float32
    assert type(core.embed) is nn.Parameter and core.embed.dtype == torch.float32
    assert core.norm.weight.dtype == torch.float32


def test_int4_base_keeps_an_int8_head():
    """Measured on the 110M shape (exporter/quantize.py, HEAD_SCHEME): int4 costs the head."""
    assert HEAD_SCHEME == {"8da8w": "8da8w", "8da4w": "8da8w"}


@pytest.mark.parametrize("scheme", ["8da8w", "8da4w"])
def test_eager_quantized_grads_track_fp32(tiny_hf, scheme):
    layout = _layout(tiny_hf)
    a = init_lora_a(layout, 0)
    fp = _grads(TrainForward(Decoder(tiny_hf, layout, a), slices=2, batch=1, max_length=16),
                layout.num_params)
    core = Decoder(tiny_hf, layout, a)
    quantize_base(core, scheme)
    got = _grads(TrainForward(core, slices=2, batch=1, max_length=16), layout.num_params)
    assert _corr(fp, got) >= MIN_CORR[scheme]


def test_none_is_a_noop(tiny_hf):
    layout = _layout(tiny_hf)
    core = Decoder(tiny_hf, layout, init_lora_a(layout, 0))
    assert quantize_base(core, "none") == 0
    assert all(type(p) is nn.Parameter for p in core.parameters())


def test_unknown_or_unlowerable_scheme_is_refused_up_front():
    with pytest.raises(ExportError, match="unknown --quantize scheme 'int3'; choose one of"):
        check_scheme("int3", "xnnpack")
    with pytest.raises(ExportError, match="needs --backend xnnpack"):
        check_scheme("8da8w", "portable")
    check_scheme("none", "portable")
    check_scheme("8da4w", "xnnpack")


def test_int4_refuses_a_linear_not_divisible_by_the_group(tmp_path):
    from exporter.checkpoint import inspect_checkpoint, load_model

    hf = load_model(inspect_checkpoint(make_tiny_checkpoint(
        "llama", tmp_path / "odd", intermediate_size=80)))
    layout = _layout(hf)
    core = Decoder(hf, layout, init_lora_a(layout, 0))
    with pytest.raises(ExportError, match="multiple of 32.*down_proj.*Use --quantize 8da8w"):
        quantize_base(core, "8da4w")


def test_epsilon_warning_thresholds():
    assert epsilon_warning("none", 1e-4) is None
    assert epsilon_warning("8da8w", 1e-2) is None
    msg = epsilon_warning("8da4w", 1e-3)
    assert msg is not None and "8da4w" in msg and ">= 0.01" in msg


# --- exported bundles -------------------------------------------------------------------------

def _quantized_core(bundle: Path):
    manifest = read_manifest(bundle)
    layout = lora_layout_of(manifest)
    hf = load_base_model(manifest)
    core = Decoder(hf, layout, load_lora_a(bundle, layout))
    quantize_base(core, manifest.quantize)
    return manifest, layout, hf, core


@pytest.fixture(params=["8da8w", "8da4w"])
def quant_bundle(request) -> Path:
    return request.getfixturevalue(f"quant_bundle_{request.param}")


def test_manifest_records_the_scheme(quant_bundle):
    m = read_manifest(quant_bundle)
    assert m.quantize in ("8da8w", "8da4w") and quant_bundle.name.startswith(f"quant-{m.quantize}")
    fp = m.model_copy(update={"quantize": "none"})
    assert fp.bundle_id != m.bundle_id  # adapters never cross schemes silently


def test_programs_agree_with_eager_quantized_model(quant_bundle):
    manifest, layout, _, core = _quantized_core(quant_bundle)
    errs = probe_quantized(quant_bundle, manifest, core, layout)
    assert set(errs) == {s.method for s in manifest.train.shapes} | {"infer"}
    assert max(v for k, v in errs.items() if k != "infer") <= QUANT_PROBE_ATOL


def test_program_grads_track_reference(quant_bundle):
    """g_i of the exported program vs the fp32 eager model, and vs the eager quantized one."""
    manifest, layout, hf, core = _quantized_core(quant_bundle)
    t = manifest.train.max_length
    prog = _grads(TrainProgram(quant_bundle, slices=2, batch=1), layout.num_params)
    same = _grads(TrainForward(core, slices=2, batch=1, max_length=t), layout.num_params)
    fp32 = _grads(TrainForward(Decoder(hf, layout, load_lora_a(quant_bundle, layout)), slices=2,
                               batch=1, max_length=t), layout.num_params)
    assert _corr(prog, same) >= 0.99
    assert _corr(prog, fp32) >= MIN_CORR[manifest.quantize]


def test_probe_refuses_a_program_that_computes_something_else(quant_bundle_8da8w):
    """A program checked against another model (here: the fp32 one) is refused, not written."""
    manifest, layout, hf, _ = _quantized_core(quant_bundle_8da8w)
    wrong = Decoder(hf, layout, load_lora_a(quant_bundle_8da8w, layout))
    with torch.no_grad():  # a visibly different model: what a mis-lowered program looks like
        wrong.lm_head.weight.mul_(5.0)
    with pytest.raises(ExportError, match="disagrees with the eager model quantized the same"):
        probe_quantized(quant_bundle_8da8w, manifest, wrong, layout)


def test_quantized_bundle_trains(quant_bundle_8da8w):
    """A few P-RGE (dual, q = 1) steps on one batch lower its loss."""
    bundle = quant_bundle_8da8w
    manifest = read_manifest(bundle)
    prog, single = TrainProgram(bundle, slices=2, batch=1), TrainProgram(bundle, slices=1, batch=1)
    gen = torch.Generator().manual_seed(3)
    t = manifest.train.max_length
    tokens = torch.randint(0, 256, (1, t), generator=gen)
    mask = torch.ones(1, t)
    b = torch.zeros(manifest.lora.num_params)
    before = float(single.losses(tokens, mask, b[None])[0])
    for step in range(40):
        b = zo.zo_step(prog, "prge-dual", b, tokens, mask, run_seed=0, step=step, q=1, eps=EPS,
                       lr=2e-3).lora_b
    after = float(single.losses(tokens, mask, b[None])[0])
    assert after < before - 0.02, (before, after)


def test_quantized_bundle_serves(quant_bundle_8da4w):
    """Greedy generation through the infer program matches the eager quantized model."""
    bundle = quant_bundle_8da4w
    manifest, layout, _, core = _quantized_core(bundle)
    row = (torch.randn(layout.num_params, generator=torch.Generator().manual_seed(5)) * 0.02)
    prog = InferProgram(bundle)
    ids = [1, 2, 3, 40, 50, 60, 70, 80, 90, 100, 110]
    logits = prog.forward(ids, 0, row.numpy())
    new = []
    for _ in range(6):
        nxt = int(np.argmax(logits))
        new.append(nxt)
        logits = prog.forward([nxt], len(ids) + len(new) - 1, row.numpy())
    assert all(0 <= i < manifest.model.vocab_size for i in new)
    seq = ids + new
    fwd = TrainForward(core, slices=1, batch=1, max_length=len(seq))
    with torch.no_grad():
        eager = core.lm_head(fwd.hidden(torch.tensor([seq]), row[None]))[0]
    assert eager[len(ids) - 1:-1].argmax(-1).tolist() == new


def test_trainer_warns_when_epsilon_is_too_small(quant_bundle_8da8w, tmp_path, caplog):
    from agent.core.train_job import TrainJob
    from agent.training.trainer import ZOTrainRecipe

    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "response": "a{i}"}}\n' for i in range(8)))
    cfg = TrainJob(bundle=quant_bundle_8da8w, data=data, out=tmp_path / "out", eps=1e-3,
                   mode="prge-dual", q=1, batch=1)
    # only the warning is under test: setup may fail later on the toy data
    with caplog.at_level(logging.WARNING, logger="agent.training.trainer"), \
            contextlib.suppress(Exception):
        ZOTrainRecipe(cfg).setup()
    assert any("below 0.01" in r.getMessage() and "8da8w" in r.getMessage()
               for r in caplog.records)

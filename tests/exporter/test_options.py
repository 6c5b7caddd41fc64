"""Export options: layer selection and validation (pure, fast)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.errors import ExportError
from exporter.families import FAMILIES, family_for
from exporter.options import ExportOptions


@pytest.mark.parametrize("spec, layers", [
    ("all", (0, 1, 2, 3, 4, 5, 6, 7)),
    ("last-quarter", (6, 7)),
    ("last-3", (5, 6, 7)),
])
def test_lora_layer_selection(spec, layers):
    assert ExportOptions(lora_layers=spec).lora_layer_indices(8) == layers


@pytest.mark.parametrize("spec", ["first-2", "last-0", "last-9", "last-x"])
def test_bad_layer_selection(spec):
    with pytest.raises(ValueError):
        ExportOptions(lora_layers=spec).lora_layer_indices(8)


def test_targets_are_canonicalized_and_checked():
    assert ExportOptions(targets=("v_proj", "q_proj")).targets == ("q_proj", "v_proj")
    with pytest.raises(ValidationError, match="unknown LoRA targets"):
        ExportOptions(targets=("qkv",))


def test_shapes_are_the_cross_product():
    opts = ExportOptions(slices=(8, 1, 2), batch=(2, 1))
    assert opts.train_shapes() == [(1, 1), (1, 2), (2, 1), (2, 2), (8, 1), (8, 2)]


def test_explicit_shapes_pick_from_the_grid():
    opts = ExportOptions(slices=(1, 8, 32), batch=(1, 4, 16),
                         shapes=((32, 1), (1, 1), (8, 4), (1, 16), (1, 1)))
    assert opts.train_shapes() == [(1, 1), (1, 16), (8, 4), (32, 1)]
    with pytest.raises(ValidationError, match=r"outside it: \[\(2, 1\)\]"):
        ExportOptions(slices=(1, 8), batch=(1,), shapes=((2, 1),))
    with pytest.raises(ValidationError, match="non-empty"):
        ExportOptions(shapes=())


def test_unknown_quantize_scheme_is_rejected():
    assert ExportOptions(quantize="8da4w").quantize == "8da4w"
    with pytest.raises(ValidationError):
        ExportOptions(quantize="int3")


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_every_family_row_resolves(fam):
    for model_type in fam.model_types:
        assert family_for(model_type) is fam


def test_unknown_family_lists_supported():
    with pytest.raises(ExportError, match="Supported: llama .*; qwen2"):
        family_for("mistral")

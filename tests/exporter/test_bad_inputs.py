"""Bad input → ExportError naming the problem and the fix; nothing half-written is left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import ExportError
from exporter.cli import main as export_main
from exporter.export import export_bundle
from exporter.options import ExportOptions
from tests.exporter.tiny import make_tiny_checkpoint

FAST = ExportOptions(slices=(1,), batch=(1,), max_length=16, max_context=32, prefill_chunk=8)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("tiny") / "llama")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".mobizo-export-")]


@pytest.mark.parametrize("remove, words", [
    ("config.json", "no config.json"),
    ("model.safetensors", r"no \*\.safetensors"),
    ("tokenizer.json", "no tokenizer"),
])
def test_missing_files(tiny_llama, tmp_path, remove, words):
    ckpt = _copy(tiny_llama, tmp_path / "ckpt")
    (ckpt / remove).unlink()
    with pytest.raises(ExportError, match=words):
        export_bundle(ckpt, tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_unsupported_family(tiny_llama, tmp_path):
    ckpt = _copy(tiny_llama, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="'gpt2' is not a supported family.*llama.*qwen2.*"
                                          "qwen3.*gemma3_text"):
        export_bundle(ckpt, tmp_path / "out", FAST)


def test_tokenizer_larger_than_embedding(tmp_path):
    ckpt = make_tiny_checkpoint("llama", tmp_path / "ckpt", vocab_size=200)
    with pytest.raises(ExportError, match="259 tokens but the model embeds only 200"):
        export_bundle(ckpt, tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("update, words", [
    ({"max_length": 4}, "--max-length 4 is out of range"),
    ({"max_length": 100_000}, "--max-length 100000 is out of range"),
    ({"max_context": 100_000}, "--max-context 100000 is out of range"),
    ({"lora_layers": "last-9"}, "the model has 2 layers"),
    ({"max_targets": 500}, "--max-targets 500 exceeds --max-length - 1"),
])
def test_limits(tiny_llama, tmp_path, update, words):
    with pytest.raises(ExportError, match=words):
        export_bundle(tiny_llama, tmp_path / "out", FAST.model_copy(update=update))
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_slices_out_of_range_rejected_by_cli(tiny_llama, tmp_path, capsys):
    assert export_main([str(tiny_llama), "--out", str(tmp_path / "o"), "--slices", "0,2"]) == 2
    assert "between 1 and" in capsys.readouterr().err
    assert export_main([str(tiny_llama), "--out", str(tmp_path / "o"), "--slices", "65"]) == 2


def test_existing_target_needs_force(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_bundle(tiny_llama, out, FAST)
    assert (out / "keep.txt").read_text() == "mine"


def test_quantize_on_portable_backend_is_rejected(tiny_llama, tmp_path, capsys):
    assert export_main([str(tiny_llama), "--out", str(tmp_path / "o"), "--quantize", "8da4w",
                        "--backend", "portable"]) == 1
    assert "needs --backend xnnpack" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_failure_during_export_leaves_old_bundle_intact(tiny_llama, tmp_path):
    """--force with a failing export must not destroy what was there."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(ExportError):
        export_bundle(tiny_llama, out, FAST.model_copy(update={"max_length": 4}), force=True)
    assert (out / "manifest.json").read_text() == "{}"
    _no_leftovers(tmp_path)


def _with_config(src: Path, dst: Path, **fields) -> Path:
    ckpt = _copy(src, dst)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(fields)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


@pytest.mark.parametrize("family, fields, words", [
    ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
     r"rope_parameters\.rope_type = 'dynamic'.*not supported"),
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0,
                                "original_max_position_embeddings": 64}},
     r"rope_type = 'yarn'"),
    ("llama", {"num_local_experts": 8}, "num_local_experts = 8: mixture-of-experts"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ("llama", {"quantization_config": {"quant_method": "gptq", "bits": 4}},
     "quantization_config.*pre-quantized"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
     "sliding_attention.*not implemented for qwen2.*use_sliding_window=false"),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0},
     "not implemented for qwen3"),
    ("gemma3_text", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping = 50.0"),
    ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
])
def test_unsupported_architecture_features_are_refused(tmp_path, family, fields, words):
    """A config field that changes the maths and is not implemented is refused with the field
    named, before anything is lowered: never exported wrong."""
    src = make_tiny_checkpoint(family, tmp_path / "src")
    ckpt = _with_config(src, tmp_path / "ckpt", **fields)
    with pytest.raises(ExportError, match=words):
        export_bundle(ckpt, tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)

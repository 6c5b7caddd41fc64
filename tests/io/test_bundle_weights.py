"""Bundle format 4's shared weights file: checked against the manifest before any program
loads (missing, truncated, another bundle's: refused by name), older formats served or
refused with the ``mobizo-export`` command that rebuilds them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.core.bundle import manifest_from_json
from agent.core.bundle_reexport import reexport_command
from agent.errors import BundleError
from agent.io.bundle_files import is_usable, read_manifest, weights_path
from tests.io.tiny_bundle import make_bundle


def _with_weights(bundle: Path, data: bytes) -> Path:
    """Give the tiny bundle a weights file holding ``data``, recorded in its manifest."""
    (bundle / "weights.ptd").write_bytes(data)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["weights"] = {"file": "weights.ptd", "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    return bundle


def test_a_matching_weights_file_is_accepted(tmp_path: Path) -> None:
    bundle = _with_weights(make_bundle(tmp_path / "b"), b"w" * 1000)
    assert weights_path(bundle, read_manifest(bundle)) == bundle / "weights.ptd"


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.unlink(), ["weights.ptd is missing", "mobizo-export tiny"]),
    (lambda p: p.write_bytes(b"w" * 600), ["weights.ptd has 600 bytes", "truncated"]),
    (lambda p: p.write_bytes(b"x" * 1000), ["weights.ptd is not this bundle's", "another bundle"]),
])
def test_a_bad_weights_file_is_refused_by_name(tmp_path, damage, words) -> None:
    bundle = _with_weights(make_bundle(tmp_path / "b"), b"w" * 1000)
    manifest = read_manifest(bundle)
    damage(bundle / "weights.ptd")
    with pytest.raises(BundleError) as err:
        weights_path(bundle, manifest)
    for word in words:
        assert word in str(err.value)
    assert "--out " + str(bundle) in str(err.value)


def test_a_missing_weights_file_makes_the_bundle_incomplete(tmp_path: Path) -> None:
    bundle = _with_weights(make_bundle(tmp_path / "b"), b"w" * 10)
    (bundle / "weights.ptd").unlink()
    with pytest.raises(BundleError, match="weights.ptd is missing; re-export it: mobizo-export"):
        read_manifest(bundle)


def test_format_3_is_still_served_but_re_exported_when_kept(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["format_version"] = 3
    del raw["weights"]  # format 3: each program carries its own weights
    (bundle / "manifest.json").write_text(json.dumps(raw))
    manifest = read_manifest(bundle)
    assert manifest.weights is None and weights_path(bundle, manifest) is None
    assert not is_usable(bundle)  # a kept export is redone in the current layout


def test_format_4_without_the_llm_ops_is_still_served_but_re_exported_when_kept(
        tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["format_version"] = 4  # attention without llama::custom_sdpa: slower, still correct
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(bundle).format_version == 4
    assert not is_usable(bundle)


def test_format_and_weights_entry_must_agree(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    with pytest.raises(BundleError, match="format 3 cannot have a weights file entry"):
        manifest_from_json({**raw, "format_version": 3}, bundle_dir=bundle, path=bundle)
    with pytest.raises(BundleError, match=r"format \d needs a weights file entry"):
        manifest_from_json({**raw, "weights": None}, bundle_dir=bundle, path=bundle)


def test_an_unreadable_format_names_the_exact_command(tmp_path: Path) -> None:
    raw = {"format_version": 2, "base": {"source": "preset:starter seed=3"},
           "model": {"num_layers": 4}, "quantize": "8da8w", "backend": "xnnpack",
           "train": {"max_length": 64, "max_targets": 63, "head_rows": 512,
                     "shapes": [{"slices": 1, "batch": 2}, {"slices": 4, "batch": 2}]},
           "infer": {"max_context": 128, "prefill_chunk": 16},
           "lora": {"rank": 16, "alpha": 32.0, "layers": [3],
                    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"]}}
    with pytest.raises(BundleError) as err:
        manifest_from_json(raw, bundle_dir=tmp_path / "b", path=tmp_path / "m")
    command = (f"mobizo-export --preset starter --seed 3 --quantize 8da8w --max-length 64 "
               f"--max-context 128 --prefill-chunk 16 --slices 1,4 --batch 2 "
               f"--lora-layers last-1 --out {tmp_path / 'b'} --force")
    assert command in str(err.value)
    newer = {**raw, "format_version": 99}
    with pytest.raises(BundleError, match="upgrade mobizo-agent, or re-export"):
        manifest_from_json(newer, bundle_dir=tmp_path / "b", path=tmp_path / "m")


def test_reexport_command_of_a_checkpoint_and_of_garbage(tmp_path: Path) -> None:
    raw = {"base": {"source": "/ckpt/qwen 0.5b"}, "train": {"max_length": 256},
           "infer": None, "lora": {"targets": ["q_proj", "v_proj"]}}
    assert reexport_command(raw, tmp_path) == (
        f"mobizo-export '/ckpt/qwen 0.5b' --targets q_proj,v_proj --train-only "
        f"--out {tmp_path} --force")
    assert reexport_command(["not", "a", "manifest"], tmp_path) == (
        f"mobizo-export CHECKPOINT_DIR --out {tmp_path} --force")

"""Bundle format 4: the weights once on disk (weights.ptd) and once in memory (XNNPACK's
weight cache), a bad weights file refused before anything loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core.bundle import BUNDLE_FORMAT_VERSION
from agent.errors import BundleError
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram
from agent.io.xnnpack_options import weight_cache_enabled

pytestmark = pytest.mark.runtime


def test_the_weights_are_stored_once(starter_bundle: Path) -> None:
    m = read_manifest(starter_bundle)
    assert m.format_version == BUNDLE_FORMAT_VERSION and m.weights is not None
    weights = starter_bundle / m.weights.file
    assert weights.stat().st_size == m.weights.size
    programs = [starter_bundle / m.train.program, starter_bundle / m.infer.program]
    fp32 = m.model.num_params * 4
    # each program holds code and small tables only; the file holds every weight once
    assert all(p.stat().st_size < 0.1 * fp32 for p in programs)
    total = weights.stat().st_size + sum(p.stat().st_size for p in programs)
    assert total <= 1.15 * fp32, f"bundle {total} bytes vs {fp32} bytes of fp32 weights"


def test_methods_share_one_packed_copy(starter_bundle: Path) -> None:
    """In a fresh process: the second method of a program adds far less than the first."""
    out = subprocess.run([sys.executable, "-m", "agent.bench.weights_rss", str(starter_bundle),
                          "--child", "infer"], capture_output=True, text=True, check=True)
    steps = json.loads(out.stdout.strip().splitlines()[-1])["steps_mb"]
    m = read_manifest(starter_bundle)
    weights_mb = m.model.num_params * 4 / 2**20
    assert steps["prefill"] > 0.5 * weights_mb  # the first method packs the weights
    assert steps["decode"] < 0.25 * weights_mb, steps  # the second one reuses them


def test_loaders_turn_the_weight_cache_on(starter_bundle: Path) -> None:
    InferProgram(starter_bundle)
    assert weight_cache_enabled() is True


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.unlink(), "weights.ptd is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    (lambda p: p.write_bytes(bytes(reversed(p.read_bytes()))), "another bundle"),
])
def test_a_bad_weights_file_is_refused_before_loading(starter_bundle, tmp_path, damage,
                                                      words) -> None:
    bundle = Path(shutil.copytree(starter_bundle, tmp_path / "b"))
    manifest = read_manifest(bundle)
    damage(bundle / "weights.ptd")
    for load in (lambda: InferProgram(bundle, manifest=manifest),
                 lambda: TrainProgram(bundle, slices=1, batch=2, manifest=manifest)):
        with pytest.raises(BundleError, match=words) as err:
            load()
        assert str(bundle / "weights.ptd") in str(err.value)
        assert "mobizo-export --preset starter" in str(err.value)


def test_a_tied_embedding_is_stored_once(bundle_cache_dir: Path) -> None:
    """The lookup's table (by name) and infer.pte's packed LM head (by content) are one
    buffer of weights.ptd."""
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    from tests.exporter.tiny import family_bundle_path

    bundle = family_bundle_path(bundle_cache_dir, "llama-tied")
    m = read_manifest(bundle)
    assert m.weights is not None
    payload = FlatTensorSerializer().deserialize(Cord((bundle / m.weights.file).read_bytes()))
    table = m.model.vocab_size * m.model.hidden_size * 4
    keys = [k for k, e in payload.named_data.items()
            if len(payload.buffers[e.buffer_index]) == table]
    buffers = {payload.named_data[k].buffer_index for k in keys}
    assert len(keys) >= 2 and len(buffers) == 1, (keys, buffers)

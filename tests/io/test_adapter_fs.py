"""Adapter validation against a bundle: every way an adapter can be wrong is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from agent.errors import AdapterError
from agent.io.adapter_fs import WEIGHTS_NAME, AdapterValidator
from tests.io.tiny_bundle import make_adapter, make_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def test_round_trip(bundle: Path, tmp_path: Path) -> None:
    v = AdapterValidator(bundle)
    flat = v.load_flat_b(make_adapter(bundle, tmp_path / "a", 0.25))
    assert flat.dtype == np.float32 and flat.shape == (v.layout.num_params,)
    assert np.all(flat == 0.25)
    assert np.all(v.load_flat_b(v.initial_dir) == 0)


def test_refuses_other_bundle_id(bundle: Path, tmp_path: Path) -> None:
    v = AdapterValidator(bundle)
    with pytest.raises(AdapterError, match="trained for bundle"):
        v.load_flat_b(make_adapter(bundle, tmp_path / "a", 0.1), bundle_id="0" * 16)


def test_refuses_different_lora_a(bundle: Path, tmp_path: Path) -> None:
    other = make_bundle(tmp_path / "other", seed=1)
    with pytest.raises(AdapterError, match="frozen LoRA-A"):
        AdapterValidator(bundle).load_flat_b(make_adapter(other, tmp_path / "a", 0.1))


def test_refuses_corrupt_file(bundle: Path, tmp_path: Path) -> None:
    a = make_adapter(bundle, tmp_path / "a", 0.1)
    data = (a / WEIGHTS_NAME).read_bytes()
    (a / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="corrupt"):
        AdapterValidator(bundle).load_flat_b(a)
    with pytest.raises(AdapterError, match="no adapter_model"):
        AdapterValidator(bundle).load_flat_b(tmp_path / "missing")


def test_refuses_wrong_shape_and_nan(bundle: Path, tmp_path: Path) -> None:
    a = make_adapter(bundle, tmp_path / "a", 0.1)
    tensors = load_file(str(a / WEIGHTS_NAME))
    key = next(k for k in tensors if "lora_B" in k)
    bad = dict(tensors)
    bad[key] = np.zeros((3, 3), np.float32)
    save_file(bad, str(a / WEIGHTS_NAME))
    with pytest.raises(AdapterError, match="shape"):
        AdapterValidator(bundle).load_flat_b(a)
    bad[key] = np.full_like(tensors[key], np.nan)
    save_file(bad, str(a / WEIGHTS_NAME))
    with pytest.raises(AdapterError, match="NaN"):
        AdapterValidator(bundle).load_flat_b(a)

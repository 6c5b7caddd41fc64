"""Adapters never cross base quantization schemes (issue 8), and the refusal says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import AdapterError
from agent.io.adapter_fs import AdapterValidator
from agent.io.registry import AdapterRegistry
from tests.io.tiny_bundle import make_adapter, make_bundle


def _with_scheme(bundle: Path, scheme: str) -> Path:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["quantize"] = scheme
    path.write_text(json.dumps(data))
    return bundle


def test_adapter_of_another_scheme_is_refused_naming_both(tmp_path):
    """Same base weights and LoRA-A (same seed), only the scheme differs."""
    q8 = _with_scheme(make_bundle(tmp_path / "q8"), "8da8w")
    fp = make_bundle(tmp_path / "fp")
    root = tmp_path / "adapters"
    version = AdapterRegistry(root, validator=AdapterValidator(q8)).publish(
        make_adapter(q8, tmp_path / "a", 0.5))
    reg8 = AdapterRegistry(root, validator=AdapterValidator(q8))
    assert reg8.manifest(version).quantize == "8da8w"
    assert reg8.load_flat_b(version)[0] == version

    with pytest.raises(AdapterError) as err:
        AdapterRegistry(root, validator=AdapterValidator(fp)).load_flat_b(version)
    msg = str(err.value)
    assert "'8da8w'" in msg and "'none'" in msg
    assert "interchangeable only within one quantization scheme" in msg
    assert "retrain it on this bundle" in msg


def test_adapter_of_another_base_keeps_the_generic_reason(tmp_path):
    a = make_bundle(tmp_path / "a")
    b = make_bundle(tmp_path / "b", weights_sha="x" * 64)
    root = tmp_path / "adapters"
    version = AdapterRegistry(root, validator=AdapterValidator(a)).publish(
        make_adapter(a, tmp_path / "ad", 0.1))
    with pytest.raises(AdapterError, match="was trained for bundle .* retrain it on this bundle"):
        AdapterRegistry(root, validator=AdapterValidator(b)).load_flat_b(version)


def test_manifests_without_a_scheme_still_load(tmp_path):
    """Adapters published before the field existed (no ``quantize``) stay readable."""
    bundle = make_bundle(tmp_path / "b")
    root = tmp_path / "adapters"
    reg = AdapterRegistry(root, validator=AdapterValidator(bundle))
    version = reg.publish(make_adapter(bundle, tmp_path / "ad", 0.1))
    path = reg.path_of(version) / "manifest.json"
    data = json.loads(path.read_text())
    del data["quantize"]
    path.write_text(json.dumps(data))
    assert reg.manifest(version).quantize is None
    assert reg.load_flat_b(version)[0] == version

"""Adapters for the serve tests: good ones for the starter bundle, and broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from agent.io.adapter_fs import WEIGHTS_NAME, AdapterValidator, write_adapter
from agent.io.registry import AdapterRegistry


def write_value(bundle: Path, out: Path, value: float) -> Path:
    """An adapter for ``bundle`` with every LoRA-B value ``value``."""
    v = AdapterValidator(bundle)
    write_adapter(out, v.layout, np.full(v.layout.num_params, value, np.float32), v.a_tensors)
    return out


def publish_value(registry: AdapterRegistry, bundle: Path, out: Path, value: float,
                  **kw: object) -> str:
    return registry.publish(write_value(bundle, out, value), **kw)  # type: ignore[arg-type]


def corrupt_copy(registry: AdapterRegistry, version: str) -> str:
    """A new registry version whose weights file is cut in half (a torn write)."""
    new = f"v{9000 + len(registry.versions()):04d}"
    shutil.copytree(registry.root / version, registry.root / new)
    weights = registry.root / new / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return new


def foreign_adapter(registry: AdapterRegistry, tmp: Path) -> str:
    """A new registry version with the right shapes but another LoRA-A."""
    v = registry.validator
    assert v is not None
    rng = np.random.default_rng(99)
    a = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in v.a_tensors.items()}
    new = f"v{9500 + len(registry.versions()):04d}"
    src = tmp / f"foreign-{new}"
    write_adapter(src, v.layout, np.zeros(v.layout.num_params, np.float32), a)
    shutil.copytree(src, registry.root / new)
    shutil.copy(registry.root / registry.versions()[0] / "manifest.json",
                registry.root / new / "manifest.json")
    return new

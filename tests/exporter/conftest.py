"""Fixtures of the exporter tests: tiny family and quantized bundles, exported once per
source version.

Quantized exports lower slowly on a busy 2-core machine, so they are cached like the starter
bundle (tests/conftest.py: ``cached_bundle``); exporter/quantize.py is part of the cache name
because the shared cache key does not cover it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.exporter.tiny import FAMILY_CASES, family_bundle_path

QUANT_OPTIONS = dict(slices=(1, 2), batch=(1,), max_length=16, max_context=32, prefill_chunk=8,
                     rank=4, alpha=8.0, seed=0)


def quant_bundle_path(cache_dir: Path, scheme: str) -> Path:
    """Export (once, cached) the tiny Llama bundle quantized with ``scheme``."""
    from tests.conftest import cached_bundle
    from tests.exporter.tiny import make_tiny_checkpoint

    root = Path(__file__).resolve().parents[2]
    qkey = hashlib.sha256((root / "exporter/quantize.py").read_bytes()).hexdigest()[:8]
    ckpt = cache_dir / "ckpt-quant-llama"
    if not (ckpt / "config.json").is_file():
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        make_tiny_checkpoint("llama", tmp)
        tmp.rename(ckpt)
    return cached_bundle(cache_dir, f"quant-{scheme}-{qkey}", dict(QUANT_OPTIONS, quantize=scheme),
                         checkpoint=ckpt)


# head_rows 5: the 2 x 2 x 6 = 24 target rows take five head_loss calls, the last one partial;
# the S = 1 shape is what bench_infer.pte holds alone (as in mobizo-bench zo's bundles)
WINDOW_OPTIONS = dict(slices=(1, 2), batch=(2,), max_length=16, max_targets=6, head_rows=5,
                      train_only=True, bench_forward=True, rank=4, alpha=8.0, seed=0)


def windowed_bundle_path(cache_dir: Path) -> Path:
    """Export (once, cached) a train-only tiny Llama bundle with a 6-target loss window."""
    from tests.conftest import cached_bundle
    from tests.exporter.tiny import make_tiny_checkpoint

    ckpt = cache_dir / "ckpt-window-llama"
    if not (ckpt / "config.json").is_file():
        make_tiny_checkpoint("llama", ckpt.with_name(ckpt.name + ".tmp")).rename(ckpt)
    return cached_bundle(cache_dir, "window", WINDOW_OPTIONS, checkpoint=ckpt)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Export the quantized bundles the selected tests need now, outside any test's timeout."""
    cache = getattr(session.config, "cache", None)
    if cache is None or session.config.option.collectonly:
        return
    wanted: set[str] = set()
    for item in session.items:
        wanted.update(getattr(item, "fixturenames", ()))
    cache_dir = Path(cache.mkdir("mobizo-bundles"))
    for scheme in ("8da8w", "8da4w"):
        if f"quant_bundle_{scheme}" in wanted or "quant_bundle" in wanted:
            quant_bundle_path(cache_dir, scheme)
    if "windowed_bundle" in wanted:
        windowed_bundle_path(cache_dir)
    if "family_bundle" in wanted:  # every case, not only the family rows tests/conftest.py does
        for case in FAMILY_CASES:
            family_bundle_path(cache_dir, case)


@pytest.fixture(scope="session", params=list(FAMILY_CASES))
def family_bundle(request: pytest.FixtureRequest, bundle_cache_dir: Path) -> tuple[str, Path]:
    """``(case, bundle)`` for every case of tests/exporter/tiny.py ``FAMILY_CASES``."""
    return request.param, family_bundle_path(bundle_cache_dir, request.param)


@pytest.fixture(scope="session")
def windowed_bundle(bundle_cache_dir: Path) -> Path:
    return windowed_bundle_path(bundle_cache_dir)


@pytest.fixture(scope="session")
def quant_bundle_8da8w(bundle_cache_dir: Path) -> Path:
    return quant_bundle_path(bundle_cache_dir, "8da8w")


@pytest.fixture(scope="session")
def quant_bundle_8da4w(bundle_cache_dir: Path) -> Path:
    return quant_bundle_path(bundle_cache_dir, "8da4w")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on exported quantized bundles are slow: two XNNPACK lowerings of several minutes.

    Marked here, before `-m "not slow"` deselects, so the default run never exports them;
    `make test-all` runs them.
    """
    for item in items:
        if any(name.startswith("quant_bundle") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""Session fixtures shared by every test package.

``starter_bundle`` exports the starter preset with small shapes: T=64, S in {1, 2, 4}, b = 2 —
enough for MeZO (S=1), P-RGE (S=q=2) and P-RGE dual (S=2q=4) with q = 2, and evaluation
(S=1). Lowering to XNNPACK takes minutes on a busy 2-core machine, so the bundle is exported
once and kept in pytest's cache directory under a key made of the exporter's source, the
options and the torch/executorch versions: any change to the exporter re-exports, and
parallel sessions wait on a file lock instead of exporting the same bundle twice.
Delete ``.pytest_cache/d/mobizo-bundles`` (or run pytest with ``--cache-clear``) to force it.

The export runs in ``pytest_collection_finish`` when a selected test needs a bundle, i.e.
before any test starts, so a slow export on a busy machine is not cut off by a test's
pytest-timeout; the fixtures then find the bundle in the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

STARTER_TEST_OPTIONS = dict(slices=(1, 2, 4), batch=(2,), max_length=64, max_context=128,
                            prefill_chunk=16, seed=0)
# What shapes a bundle's bytes (cli.py and reference.py do not).
_KEY_SOURCES = tuple(f"exporter/{m}.py" for m in (
    "bundle_writer", "checkpoint", "export", "families", "layers", "lora_init", "lower",
    "model", "options", "programs", "starter", "weights_file")) + (
    "agent/core/bundle.py", "agent/core/lora_layout.py")


def _source_key(options: dict) -> str:
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(json.dumps([options, version("torch"), version("executorch")],
                                  sort_keys=True, default=list).encode())
    for rel in _KEY_SOURCES:
        p = root / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def cached_bundle(cache_dir: Path, name: str, options: dict, *, preset: str | None = None,
                  checkpoint: Path | None = None) -> Path:
    """Export once into ``cache_dir/<name>-<key>`` (or reuse it); safe across parallel sessions."""
    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    out = cache_dir / f"{name}-{_source_key(dict(options, checkpoint=str(checkpoint)))}"
    if (out / "manifest.json").is_file():
        return out
    with (cache_dir / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in cache_dir.glob(".mobizo-export-*"):  # left by a killed export
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        if not (out / "manifest.json").is_file():
            export_bundle(checkpoint, out, ExportOptions(**options), preset=preset, force=True)
    return out


def pytest_collection_finish(session: pytest.Session) -> None:
    """Export the bundles the selected tests need now, outside any test's timeout."""
    cache = getattr(session.config, "cache", None)
    if cache is None or session.config.option.collectonly:
        return
    wanted = set()
    for item in session.items:
        wanted.update(getattr(item, "fixturenames", ()))
    cache_dir = Path(cache.mkdir("mobizo-bundles"))
    if "starter_bundle" in wanted:
        cached_bundle(cache_dir, "starter", STARTER_TEST_OPTIONS, preset="starter")
    if "family_bundle" in wanted:
        from exporter.families import FAMILIES
        from tests.exporter.tiny import family_bundle_path

        for fam in FAMILIES:
            family_bundle_path(cache_dir, fam.name)
    if "real_bundle" in wanted:  # tests/bench/test_learn_bundle.py
        from tests.real_bundles import CASES, real_bundle_path

        for case in CASES:
            try:
                real_bundle_path(cache_dir, case)
            except pytest.skip.Exception:  # no npm or registry: those tests skip themselves
                break


@pytest.fixture(scope="session")
def bundle_cache_dir(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return tmp_path_factory.mktemp("mobizo-bundles")
    return Path(cache.mkdir("mobizo-bundles"))


@pytest.fixture(scope="session")
def starter_bundle(bundle_cache_dir: Path) -> Path:
    """Path of a starter-preset bundle. Shared and cached: copy it if a test must modify it."""
    return cached_bundle(bundle_cache_dir, "starter", STARTER_TEST_OPTIONS, preset="starter")

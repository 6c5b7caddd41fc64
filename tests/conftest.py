"""Session fixtures shared by every test package.

``starter_bundle`` exports the starter preset ONCE per test session (export takes a minute or
two on 2 cores) with small shapes: T=64, S in {1, 2, 4}, b = 2 — enough for MeZO (S=1),
P-RGE (S=q=2) and P-RGE dual (S=2q=4) with q = 2, and evaluation (S=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

STARTER_TEST_OPTIONS = dict(slices=(1, 2, 4), batch=(2,), max_length=64, max_context=128,
                            prefill_chunk=16, seed=0)


@pytest.fixture(scope="session")
def starter_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a starter-preset bundle (read-only: copy it if a test must modify it)."""
    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    out = tmp_path_factory.mktemp("bundles") / "starter"
    export_bundle(None, out, ExportOptions(**STARTER_TEST_OPTIONS), preset="starter")
    return out

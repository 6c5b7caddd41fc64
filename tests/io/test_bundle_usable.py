"""Reading a bundle directory: ``read_manifest`` and ``is_usable`` (reuse a kept export or not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.bundle import manifest_from_json
from agent.errors import BundleError
from agent.io.bundle_files import is_usable, read_manifest
from tests.io.tiny_bundle import make_bundle


def test_current_bundle_is_reused_and_missing_or_old_ones_are_not(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    assert is_usable(bundle)
    assert not is_usable(tmp_path / "missing")
    manifest = bundle / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["format_version"] = 2  # written by an older mobizo-export
    manifest.write_text(json.dumps(raw))
    assert not is_usable(bundle)


def test_read_manifest_names_the_fix(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    assert read_manifest(bundle).bundle_id == manifest_from_json(
        raw, bundle_dir=bundle, path=bundle / "manifest.json").bundle_id
    with pytest.raises(BundleError, match="bundle format 2"):
        manifest_from_json({**raw, "format_version": 2}, bundle_dir=bundle, path=bundle)
    with pytest.raises(BundleError, match="is invalid"):
        manifest_from_json({**raw, "surprise": 1}, bundle_dir=bundle, path=bundle)
    (bundle / raw["train"]["program"]).unlink()
    with pytest.raises(BundleError, match="incomplete"):
        read_manifest(bundle)

"""``is_usable``: whether a kept bundle can be reused, or must be exported again."""

from __future__ import annotations

import json

from agent.core.bundle import is_usable
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

"""Reading a model bundle directory: its manifest, and whether a kept export can be reused.

The manifest model and its checks are pure (agent/core/bundle.py); this is the file side.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.core.bundle import MANIFEST_NAME, BundleManifest, manifest_from_json, required_parts
from agent.errors import BundleError


def read_manifest(bundle_dir: Path) -> BundleManifest:
    """Read and validate ``bundle_dir/manifest.json``; raise BundleError with a fix if unusable.

    Raises:
        BundleError: no manifest, unreadable, another format, invalid, or a part is missing.
    """
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a model bundle (no {MANIFEST_NAME}); "
            "create one with `mobizo-export --preset starter --out DIR` or from a checkpoint"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is unreadable ({exc}); re-export the bundle") from exc
    manifest = manifest_from_json(raw, bundle_dir=Path(bundle_dir), path=path)
    for name in required_parts(manifest):
        if not (Path(bundle_dir) / name).exists():
            raise BundleError(f"{bundle_dir} is incomplete: {name} is missing; re-export it")
    return manifest


def is_usable(bundle_dir: Path) -> bool:
    """Whether ``bundle_dir`` holds a bundle this version reads (a kept export to reuse);
    False where it is missing, incomplete or of another format, so it is exported again."""
    try:
        read_manifest(bundle_dir)
    except BundleError:
        return False
    return True

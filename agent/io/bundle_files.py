"""Reading a model bundle directory: its manifest, its weights file, and whether a kept
export can be reused.

The manifest model and its checks are pure (agent/core/bundle.py); this is the file side.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.core.bundle import (
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    BundleManifest,
    manifest_from_json,
    required_parts,
)
from agent.core.bundle_reexport import reexport_command
from agent.errors import BundleError

# sha256 of weights files already checked in this process, by (device, inode, size, mtime):
# a service that reloads its program after every burst hashes the file once.
_verified: dict[tuple[int, int, int, int], str] = {}


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
            raise BundleError(f"{bundle_dir} is incomplete: {name} is missing; re-export it: "
                              f"{reexport_command(raw, Path(bundle_dir))}")
    return manifest


def is_usable(bundle_dir: Path) -> bool:
    """Whether ``bundle_dir`` holds a bundle this version writes (a kept export to reuse);
    False where it is missing, incomplete or of another (even a still readable) format, so
    it is exported again in the current layout."""
    try:
        return read_manifest(bundle_dir).format_version == BUNDLE_FORMAT_VERSION
    except BundleError:
        return False


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file, read in chunks (a weights file is as big as the model)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_path(bundle_dir: Path, manifest: BundleManifest) -> Path | None:
    """The bundle's weights file, checked against the manifest; None for a format-3 bundle.

    Checked before any program is loaded, so a bad file is refused whole, never half-loaded.

    Raises:
        BundleError: the file is missing, has another size (truncated, or another bundle's),
            or another sha256 (another bundle's); the message names the file and the
            ``mobizo-export`` command that rebuilds the bundle.
    """
    spec = manifest.weights
    if spec is None:
        return None
    path = Path(bundle_dir) / spec.file
    fix = ("re-export the bundle: "
           + reexport_command(manifest.model_dump(mode="json"), Path(bundle_dir)))
    try:
        st = path.stat()
    except OSError as exc:
        raise BundleError(f"{path} is missing ({exc.strerror}); the programs of {bundle_dir} "
                          f"keep their weights there. Restore it or {fix}") from exc
    if st.st_size != spec.size:
        raise BundleError(f"{path} has {st.st_size} bytes, the manifest says {spec.size}: it "
                          f"is truncated or from another bundle; {fix}")
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _verified.get(key)
    if digest is None:
        digest = file_sha256(path)
    if digest != spec.sha256:
        raise BundleError(f"{path} is not this bundle's weights file (sha256 {digest[:16]}..., "
                          f"the manifest says {spec.sha256[:16]}...): it is from another "
                          f"bundle or corrupt; {fix}")
    _verified[key] = digest
    return path

"""Turn a directory (an adapter or a model bundle) into a push: its manifest and its bytes.

The files are taken in sorted order and concatenated; the manifest lists them (path, size,
sha256), the concatenation's size and sha256, and a hash per chunk
(:class:`agent.core.artifact.ArtifactManifest`). An adapter is the PEFT pair
(``adapter_model.safetensors`` + ``adapter_config.json``); the bundle it was trained for comes
from ``--bundle-id`` or the ``manifest.json`` a registry version carries, and its LoRA layout
from ``adapter_config.json``. A bundle is every file under its directory; its id comes from
its own manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.core.artifact import (
    ArtifactKind,
    ArtifactManifest,
    LoraSummary,
    chunk_count,
    chunk_hash,
)
from agent.errors import MobizoError
from agent.io.adapter_fs import CONFIG_NAME, WEIGHTS_NAME
from agent.io.bundle_files import read_manifest


@dataclass(frozen=True)
class Artifact:
    """A push ready to send: its manifest and the bytes of its files, concatenated."""

    manifest: ArtifactManifest
    blob: bytes

    def chunk(self, index: int) -> bytes:
        start, end = self.manifest.span(index)
        return self.blob[start:end]


def _adapter_files(directory: Path) -> list[Path]:
    files = [directory / WEIGHTS_NAME, directory / CONFIG_NAME]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MobizoError(f"{directory} is not a PEFT adapter: {', '.join(missing)} missing")
    return files


def _bundle_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise MobizoError(f"{directory} holds no files")
    return files


def _lora_of(directory: Path) -> LoraSummary:
    path = directory / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
        return LoraSummary(rank=cfg["r"], alpha=cfg["lora_alpha"],
                           targets=list(cfg["target_modules"]),
                           layers=list(cfg["layers_to_transform"]))
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise MobizoError(f"{path} does not give the LoRA layout (r, lora_alpha, "
                          f"target_modules, layers_to_transform): {exc}") from exc


def _adapter_bundle_id(directory: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return str(json.loads((directory / "manifest.json").read_text())["bundle_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MobizoError(
            f"which bundle was {directory} trained for? It has no registry manifest.json "
            f"with a bundle_id ({exc}); pass --bundle-id (see `mobizo-agent adapters list` "
            "or the bundle's manifest.json on the device)") from exc


def build_artifact(directory: Path, kind: ArtifactKind, chunk_size: int,
                   bundle_id: str | None = None) -> Artifact:
    """Read ``directory`` and describe it for a push.

    Raises:
        MobizoError: the directory is not an adapter / bundle, or says too little.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MobizoError(f"{directory} is not a directory")
    lora = None
    if kind == "adapter":
        paths = _adapter_files(directory)
        lora = _lora_of(directory)
        bundle_id = _adapter_bundle_id(directory, bundle_id)
    else:
        bundle_id = read_manifest(directory).bundle_id
        paths = _bundle_files(directory)
    blobs = [p.read_bytes() for p in paths]
    blob = b"".join(blobs)
    total = len(blob)
    if total == 0:
        raise MobizoError(f"{directory}: its files are empty")
    chunks = [chunk_hash(blob[i * chunk_size:(i + 1) * chunk_size])
              for i in range(chunk_count(total, chunk_size))]
    files = [{"path": p.relative_to(directory).as_posix(), "size": len(b),
              "sha256": hashlib.sha256(b).hexdigest()} for p, b in zip(paths, blobs, strict=True)]
    try:
        manifest = ArtifactManifest.model_validate({
            "kind": kind, "total_size": total, "sha256": hashlib.sha256(blob).hexdigest(),
            "chunk_size": chunk_size, "chunk_sha256": chunks, "files": files,
            "bundle_id": bundle_id, "lora": lora})
    except ValidationError as exc:
        raise MobizoError(f"{directory} cannot be pushed: {exc}") from exc
    return Artifact(manifest, blob)

"""Staging an artifact push: chunks on disk, resumable, every byte checked against its hash.

Layout under ``<state dir>/artifacts/``::

    journal.json                 where the last push stands (artifact_journal.py)
    <artifact id>/manifest.json  the manifest this staging belongs to
    <artifact id>/chunks/000042  one verified chunk (written atomically)
    <artifact id>/files/         the files, assembled and verified, ready to activate

A chunk is stored only once its hash matches the manifest, written temp -> fsync -> rename, so
a chunk file that exists is a good chunk: after a restart (power cut, kill -9) the same push
(same artifact id: its kind and sha256) finds them and the controller sends only the rest.
Staging of a different manifest under the same id starts afresh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from pydantic import ValidationError

from agent.core.artifact import ArtifactManifest, chunk_hash
from agent.core.command_wire import CommandRejected
from agent.errors import MobizoError
from agent.io.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from agent.io.disk import free_bytes, human_bytes

MANIFEST = "manifest.json"
CHUNKS = "chunks"
FILES = "files"
#: Kept free beyond what a push needs (the store, logs and status must still fit).
DISK_RESERVE_BYTES = 4 << 20


class ArtifactInvalid(MobizoError):
    """The staged bytes are not what the manifest says (hash, size, layout)."""


def needed_bytes(manifest: ArtifactManifest) -> int:
    """Disk a push needs: the chunks, the assembled files (a copy), and a reserve."""
    return 2 * manifest.total_size + DISK_RESERVE_BYTES


class Staging:
    """The staging directory of one artifact id (thread-safe: chunks come on the link's
    worker thread while the job thread waits for them)."""

    def __init__(self, root: Path, manifest: ArtifactManifest) -> None:
        self.root = root
        self.manifest = manifest
        self._lock = threading.Lock()
        self._missing: set[int] = set(range(manifest.chunks))
        self.reused = 0

    @property
    def chunk_dir(self) -> Path:
        return self.root / CHUNKS

    @property
    def files_dir(self) -> Path:
        return self.root / FILES

    def _chunk_path(self, index: int) -> Path:
        return self.chunk_dir / f"{index:06d}"

    def open(self) -> None:
        """Create or reuse the directory; keep the chunks already stored that still verify."""
        saved = self.root / MANIFEST
        same = False
        if saved.is_file():
            try:
                same = ArtifactManifest.model_validate_json(saved.read_bytes()) == self.manifest
            except (OSError, ValidationError):
                same = False
        if not same and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        if not same:
            atomic_write_text(saved, self.manifest.model_dump_json())
        shutil.rmtree(self.files_dir, ignore_errors=True)  # assembled again after the chunks
        for path in self.chunk_dir.iterdir():
            index = int(path.name) if path.name.isdigit() else -1
            if 0 <= index < self.manifest.chunks and self._verify(index, path.read_bytes()):
                self._missing.discard(index)
                self.reused += 1
            else:
                path.unlink(missing_ok=True)  # a temp file, or a chunk of nothing we know

    def _verify(self, index: int, data: bytes) -> bool:
        start, end = self.manifest.span(index)
        return len(data) == end - start and chunk_hash(data) == self.manifest.chunk_sha256[index]

    def missing(self) -> list[int]:
        with self._lock:
            return sorted(self._missing)

    def store(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` if its hash matches; False when it was already stored.

        Raises:
            CommandRejected: an index out of range, or bytes that do not match the manifest.
        """
        if not 0 <= index < self.manifest.chunks:
            raise CommandRejected(f"chunk {index} is out of range: this artifact has "
                                  f"{self.manifest.chunks} chunks (0-{self.manifest.chunks - 1})")
        if not self._verify(index, data):
            raise CommandRejected(
                f"chunk {index} does not match the manifest (size {len(data)}, hash "
                f"{chunk_hash(data)}, expected {self.manifest.chunk_sha256[index]}); not stored: "
                "send it again")
        with self._lock:
            if index not in self._missing:
                return False
        atomic_write_bytes(self._chunk_path(index), data)
        with self._lock:
            self._missing.discard(index)
        return True

    def assemble(self) -> Path:
        """Write the files from the chunks into ``files/`` and check each file's and the whole
        artifact's sha256 (every chunk is re-read and re-hashed on the way).

        Raises:
            ArtifactInvalid: a hash differs (a chunk changed on disk, or the manifest lies).
        """
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.files_dir.mkdir(parents=True)
        whole = hashlib.sha256()
        reader = _ChunkReader(self)
        for entry in self.manifest.files:
            target = self.files_dir / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            # streamed a MiB at a time: a bundle's weights never sit in memory whole
            with open(target, "wb") as fh:
                left = entry.size
                while left:
                    piece = reader.read(min(left, 1 << 20))
                    digest.update(piece)
                    whole.update(piece)
                    fh.write(piece)
                    left -= len(piece)
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != entry.sha256:
                raise ArtifactInvalid(f"file {entry.path} does not match its sha256 in the "
                                      "manifest; the artifact was not activated")
        if whole.hexdigest() != self.manifest.sha256:
            raise ArtifactInvalid("the artifact's sha256 differs from the manifest's; it was "
                                  "not activated")
        for directory in sorted({p.parent for p in self.files_dir.rglob("*")}, reverse=True):
            fsync_dir(directory)
        return self.files_dir

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _ChunkReader:
    """Reads the concatenation back from the chunk files, re-checking each chunk's hash."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self.index = 0
        self.buffer = b""

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes; ArtifactInvalid when a chunk is gone or changed."""
        while len(self.buffer) < size:
            path = self.staging._chunk_path(self.index)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ArtifactInvalid(f"chunk {self.index} is gone from staging ({exc})") from exc
            if not self.staging._verify(self.index, data):
                raise ArtifactInvalid(f"chunk {self.index} changed on disk after it was stored")
            self.buffer += data
            self.index += 1
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def check_disk(where: Path, manifest: ArtifactManifest) -> None:
    """Refuse a push the disk cannot hold, before anything is staged.

    Raises:
        CommandRejected: with how much is needed and free.
    """
    free = free_bytes(where)
    need = needed_bytes(manifest)
    if free is not None and free < need:
        raise CommandRejected(
            f"not enough disk at {where}: the push of {human_bytes(manifest.total_size)} needs "
            f"{human_bytes(need)} (chunks, assembled copy and a reserve), {human_bytes(free)} "
            "free; free space on the device (e.g. `mobizo-agent data purge`, fewer "
            "adapters.versions_kept) and push again")

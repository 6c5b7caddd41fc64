"""Artifact pushes (``push-adapter``, ``push-bundle``): the manifest, the chunks, the journal.

The controller cuts an artifact (an adapter or a model bundle: a directory of files) into
chunks of ``chunk_size`` bytes and describes it in an :class:`ArtifactManifest`: the files in
order (path, size, sha256), the size and sha256 of their concatenation, and a hash per chunk.
The manifest travels as the arguments of the long ``push-*`` command (a job); each chunk
travels as the arguments of a short ``artifact-chunk`` command, base64 in JSON, so every byte
stays inside the command payload limit of issue 17 (``mqtt.command_max_payload_bytes``,
:func:`chunk_fits`) and the broker's ACL needs no new topic. The device stages the chunks,
verifies them, activates the artifact, watches it through a health window, then commits or
rolls back (agent/services/daemon/artifacts.py); each step is recorded in a small journal
(:class:`ArtifactJournal`) so a power cut at any point leaves the previous artifact serving.

Pure: models and arithmetic only, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from agent.core.fleet_documents import WireIn, WireOut
from agent.core.topics import valid_id

ArtifactKind = Literal["adapter", "bundle"]

#: Hex digits of each per-chunk hash in the manifest: the manifest must fit in one command
#: payload, and the whole artifact's full sha256 is checked as well.
CHUNK_HASH_HEX = 16
#: Most files in one artifact (a bundle has a handful; an adapter two).
MAX_FILES = 1024
#: Most chunks in one artifact (the manifest's hash list is bounded by the payload limit too).
MAX_CHUNKS = 1_000_000
#: JSON around a chunk's base64 in an ``artifact-chunk`` request (ids, index, keys): generous.
CHUNK_ENVELOPE_BYTES = 512
DEFAULT_CHUNK_SIZE = 44 * 1024  # 60,076 bytes of base64: fits the default 64 KiB payload

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _hex64(value: str) -> str:
    if not _HEX64.match(value):
        raise ValueError("must be 64 lowercase hex digits")
    return value


Sha256Hex = Annotated[str, AfterValidator(_hex64)]
_HEXCHUNK = re.compile(rf"^[0-9a-f]{{{CHUNK_HASH_HEX}}}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")


def chunk_hash(data: bytes) -> str:
    """The per-chunk hash a manifest lists: the first :data:`CHUNK_HASH_HEX` hex of sha256."""
    return hashlib.sha256(data).hexdigest()[:CHUNK_HASH_HEX]


def chunk_count(total_size: int, chunk_size: int) -> int:
    """Chunks of ``chunk_size`` needed for ``total_size`` bytes (at least one)."""
    return max(1, math.ceil(total_size / chunk_size))


def encoded_request_bytes(chunk_size: int) -> int:
    """Upper bound of an ``artifact-chunk`` request's size for chunks of ``chunk_size``."""
    return 4 * math.ceil(chunk_size / 3) + CHUNK_ENVELOPE_BYTES


def chunk_fits(chunk_size: int, max_payload_bytes: int) -> bool:
    """Whether a chunk request of ``chunk_size`` stays within a device's payload limit."""
    return encoded_request_bytes(chunk_size) <= max_payload_bytes


def largest_chunk(max_payload_bytes: int) -> int:
    """The largest chunk size (a multiple of 1 KiB) whose requests fit ``max_payload_bytes``."""
    size = ((max_payload_bytes - CHUNK_ENVELOPE_BYTES) * 3 // 4) // 1024 * 1024
    return max(1024, size)


def artifact_id_of(kind: ArtifactKind, sha256: str) -> str:
    """The id a device stages an artifact under: its kind and content, so a re-push of the
    same bytes (after a restart) finds the chunks it already has."""
    return f"{kind}-{sha256[:32]}"


class ArtifactFile(WireIn):
    """One file of the artifact, in the order the bytes are concatenated."""

    path: str = Field(max_length=512, description="relative POSIX path inside the artifact")
    size: int = Field(ge=0, le=1 << 40)
    sha256: Sha256Hex

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        parts = value.split("/")
        if any(p in (".", "..") or not _PATH_PART.match(p) for p in parts):
            raise ValueError(
                f"{value[:80]!r} is not a safe relative path (parts of A-Z a-z 0-9 _ . + -, "
                "no '..', no leading '/')")
        return value


class LoraSummary(WireIn):
    """The LoRA layout an adapter was trained with (its ``adapter_config.json``)."""

    rank: int = Field(ge=1, le=4096)
    alpha: float = Field(gt=0)
    targets: list[str] = Field(min_length=1, max_length=64)
    layers: list[int] = Field(min_length=1, max_length=4096)


class ArtifactManifest(WireIn):
    """What the controller says it sends; the device checks every byte against it."""

    kind: ArtifactKind
    total_size: int = Field(ge=1, le=1 << 40, description="bytes of all files together")
    sha256: Sha256Hex = Field(description="sha256 of the files' concatenation, in order")
    chunk_size: int = Field(ge=1024, le=16 << 20)
    chunk_sha256: list[str] = Field(
        min_length=1, max_length=MAX_CHUNKS,
        description=f"first {CHUNK_HASH_HEX} hex of each chunk's sha256, in order")
    files: list[ArtifactFile] = Field(min_length=1, max_length=MAX_FILES)
    bundle_id: str = Field(
        min_length=1, max_length=128,
        description="adapter: the bundle it was trained for; bundle: its own id")
    lora: LoraSummary | None = Field(default=None, description="adapter: its LoRA layout")

    @field_validator("chunk_sha256")
    @classmethod
    def _chunk_hex(cls, value: list[str]) -> list[str]:
        bad = next((i for i, h in enumerate(value) if not _HEXCHUNK.match(h)), None)
        if bad is not None:
            raise ValueError(f"chunk {bad}: must be {CHUNK_HASH_HEX} lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ArtifactManifest:
        want = chunk_count(self.total_size, self.chunk_size)
        if len(self.chunk_sha256) != want:
            raise ValueError(f"{len(self.chunk_sha256)} chunk hashes for {self.total_size} "
                             f"bytes in chunks of {self.chunk_size}; expected {want}")
        if sum(f.size for f in self.files) != self.total_size:
            raise ValueError("the files' sizes do not add up to total_size")
        if len({f.path for f in self.files}) != len(self.files):
            raise ValueError("a file is listed twice")
        if self.kind == "adapter" and self.lora is None:
            raise ValueError("an adapter's manifest must give its LoRA layout (lora)")
        if not valid_id(self.bundle_id):
            raise ValueError("bundle_id: use 1-128 of A-Z a-z 0-9 _ . : -")
        return self

    @property
    def artifact_id(self) -> str:
        return artifact_id_of(self.kind, self.sha256)

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    def span(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of chunk ``index`` in the concatenation."""
        start = index * self.chunk_size
        return start, min(self.total_size, start + self.chunk_size)


# --- command arguments and outputs -------------------------------------------------------


class PushArgs(WireIn):
    """``push-adapter`` / ``push-bundle``: the manifest and how long to watch the result."""

    manifest: ArtifactManifest
    health_window_s: float = Field(
        default=10.0, ge=0.0, le=3600.0,
        description="after activation, the artifact must stay healthy this long to commit")
    transfer_timeout_s: float = Field(
        default=900.0, gt=0.0, le=7 * 86400.0,
        description="give up (nothing activated) when the chunks have not all come by then")


class ChunkArgs(WireIn):
    """``artifact-chunk``: one chunk of a staged push, base64."""

    artifact_id: str = Field(max_length=128)
    index: int = Field(ge=0, lt=MAX_CHUNKS)
    data: str = Field(max_length=24 << 20, description="the chunk's bytes, base64 (RFC 4648)")

    @field_validator("artifact_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not valid_id(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from exc
        return value

    def payload(self) -> bytes:
        return base64.b64decode(self.data, validate=True)


class ArtifactStatusArgs(WireIn):
    """``artifact-status``: which chunks of a push the device still needs."""

    artifact_id: str = Field(max_length=128)

    @field_validator("artifact_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not valid_id(value):
            raise ValueError("use 1-128 of A-Z a-z 0-9 _ . : -")
        return value


class ChunkOutput(WireOut):
    artifact_id: str
    index: int
    stored: bool = Field(description="False: it was already stored (a repeat)")
    missing: int = Field(description="chunks still to come")


class ArtifactStatusOutput(WireOut):
    artifact_id: str
    state: Literal["receiving", "not_receiving"]
    missing: list[int] = Field(default_factory=list, description="chunk indices still to come")
    received: int = 0


class PushOutput(WireOut):
    """A committed push."""

    artifact_id: str
    kind: ArtifactKind
    outcome: Literal["committed"] = "committed"
    version: str | None = Field(default=None, description="adapter: its registry version")
    bundle_id: str
    bytes: int
    chunks_reused: int = Field(default=0, description="chunks already staged before this job")
    health: str = Field(default="", description="what the health window saw")


# --- the journal ------------------------------------------------------------------------

JournalStep = Literal["staging", "activating", "health", "committed", "rolled_back", "refused"]
#: Steps after which something may be active that was never committed.
UNCOMMITTED = frozenset({"activating", "health"})


class ArtifactJournal(WireIn):
    """Where the last push stands; written atomically at each step (``artifacts/journal.json``).

    Attributes:
        previous: what served before (adapter version, or bundle directory name).
        new: what the push activated (None until known).
        previous_adapter: a bundle push's adapter active before it (adapters trained for
            the old bundle do not fit the new one, so the push serves the new bundle's own
            and a rollback activates this one again); None for an adapter push.
    """

    artifact_id: str
    kind: ArtifactKind
    step: JournalStep
    job_id: str | None = None
    previous: str | None = None
    new: str | None = None
    previous_adapter: str | None = None
    reason: str = ""
    updated_at: float

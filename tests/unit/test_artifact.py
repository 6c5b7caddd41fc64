"""Artifact pushes without a broker: the manifest's checks, the payload arithmetic, staging
(resumable, every hash checked) and the journal's recovery at start on a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.controller.push_manifest import build_artifact
from agent.core.artifact import (
    ArtifactManifest,
    ChunkArgs,
    chunk_fits,
    encoded_request_bytes,
    largest_chunk,
)
from agent.core.artifact_calls import call_artifact_chunk, call_push_bundle
from agent.core.command_wire import CommandRejected
from agent.core.commands import NO_JOB, parse_command
from agent.io.adapter_fs import AdapterValidator
from agent.io.registry import AdapterRegistry
from agent.services.daemon.artifact_activate import activate_adapter
from agent.services.daemon.artifact_journal import Journal, recover
from agent.services.daemon.artifact_staging import ArtifactInvalid, Staging
from tests.integration.artifact_support import tiny_bundle
from tests.io.tiny_bundle import make_adapter


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path / "bundle")


def _adapter(bundle: Path, tmp_path: Path, value: float = 0.5, chunk_size: int = 1024):
    out = make_adapter(bundle, tmp_path / f"a{value}", value)
    return build_artifact(out, "adapter", chunk_size, AdapterValidator(bundle).bundle_id)


def test_default_chunks_fit_the_default_payload_limit() -> None:
    assert chunk_fits(44 * 1024, 64 * 1024)
    assert not chunk_fits(48 * 1024, 64 * 1024)
    for limit in (4096, 64 * 1024, 1 << 20):
        assert encoded_request_bytes(largest_chunk(limit)) <= limit


def test_manifest_refuses_what_does_not_add_up(bundle: Path, tmp_path: Path) -> None:
    good = _adapter(bundle, tmp_path).manifest.model_dump(mode="json")
    cases = [
        ({"chunk_sha256": good["chunk_sha256"][:-1]}, "chunk hashes for"),
        ({"total_size": good["total_size"] + 1}, "do not add up"),
        ({"lora": None}, "LoRA layout"),
        ({"files": [dict(good["files"][0], path="../etc/passwd")] + good["files"][1:]},
         "safe relative path"),
        ({"bundle_id": "a/b"}, "bundle_id"),
    ]
    for change, words in cases:
        with pytest.raises(ValidationError, match=words.replace("(", r"\(")):
            ArtifactManifest.model_validate({**good, **change})


def test_chunk_request_parses_and_bad_base64_is_a_bad_request() -> None:
    body = json.dumps({"args": {"artifact_id": "adapter-x", "index": 0, "data": "%%%"}})
    err = parse_command("artifact-chunk", body.encode(), now=0.0, max_payload_bytes=65536)
    assert getattr(err, "code", None) == "bad_request" and "not base64" in err.message  # type: ignore[union-attr]


def test_a_handler_without_artifacts_rejects_them(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(CommandRejected, match="does not take artifact pushes"):
        call_artifact_chunk(object(), ChunkArgs(artifact_id="x", index=0, data=""), NO_JOB)
    from agent.core.artifact import PushArgs

    args = PushArgs(manifest=_adapter(bundle, tmp_path).manifest)
    with pytest.raises(CommandRejected, match="use push-adapter"):
        call_push_bundle(object(), args, NO_JOB)


def test_staging_keeps_verified_chunks_across_a_restart_and_checks_every_hash(
        bundle: Path, tmp_path: Path) -> None:
    art = _adapter(bundle, tmp_path)
    m = art.manifest
    root = tmp_path / "staging" / m.artifact_id
    first = Staging(root, m)
    first.open()
    bad = bytearray(art.chunk(0))
    bad[0] ^= 1
    with pytest.raises(CommandRejected, match="does not match the manifest"):
        first.store(0, bytes(bad))
    assert first.store(0, art.chunk(0)) and not first.store(0, art.chunk(0))
    with pytest.raises(CommandRejected, match="out of range"):
        first.store(m.chunks, b"x")
    again = Staging(root, m)  # a new process: the stored chunk is kept, verified again
    again.open()
    assert again.reused == 1 and again.missing() == list(range(1, m.chunks))
    for i in again.missing():
        again.store(i, art.chunk(i))
    files = again.assemble()
    assert (files / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "a0.5" / "adapter_model.safetensors").read_bytes()
    # a chunk that changes on disk after it was stored is caught when assembling
    chunk = root / "chunks" / "000000"
    chunk.write_bytes(bytes(bad))
    with pytest.raises(ArtifactInvalid, match="changed on disk"):
        again.assemble()


def test_recovery_at_start_rolls_back_an_uncommitted_adapter(bundle: Path,
                                                             tmp_path: Path) -> None:
    state = tmp_path / "state"
    reg = AdapterRegistry(state / "adapters", validator=AdapterValidator(bundle))
    kept = reg.publish(make_adapter(bundle, tmp_path / "kept", 0.1))
    art = _adapter(bundle, tmp_path)
    journal = Journal(state / "artifacts" / "journal.json")
    entry = journal.write(art.manifest.artifact_id, "adapter", "activating", previous=kept)
    pushed = activate_adapter(reg, make_adapter(bundle, tmp_path / "p", 0.3),
                              art.manifest.artifact_id)
    journal.advance(entry, "health", new=pushed)
    assert reg.active() == pushed
    done = recover(state, reg)
    assert done is not None and done.step == "rolled_back"
    assert reg.active() == kept and reg.versions() == [kept]
    assert recover(state, reg) is None  # nothing left to do

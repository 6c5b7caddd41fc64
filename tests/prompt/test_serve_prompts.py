"""The HTTP API with the shared prompt format: content parts, developer turns, refusals.

The real service on the starter bundle (real HTTP, ExecuTorch, SQLite): text content parts
are joined and stored as text (what the trainer reads), a part of another type is a 400
naming the field, ``developer`` is a role both sides accept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.io.bundle_files import read_manifest
from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def service(starter_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[InferenceService]:
    svc = InferenceService(starter_bundle, tmp_path_factory.mktemp("prompt-state"),
                           ServeConfig(listen="127.0.0.1:0"))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def client(service: InferenceService) -> Client:
    assert service.address is not None
    return Client(*service.address, token=service.token)


def _chat(client: Client, messages: list[dict]) -> object:
    return client.post("/v1/chat/completions", {"messages": messages, "max_tokens": 4,
                                                "temperature": 0})


def test_text_parts_are_joined_and_stored_as_text(service: InferenceService,
                                                  client: Client) -> None:
    parts = [{"type": "text", "text": "first line"}, {"type": "text", "text": "second"}]
    reply = _chat(client, [{"role": "developer", "content": "be brief"},
                           {"role": "user", "content": parts}])
    assert reply.status == 200, reply.text
    assert service.store is not None
    service.store.flush()
    row = service.store.get(reply.json["id"])
    assert row is not None and row["messages"] == [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "first line\nsecond"}]


def test_a_non_text_part_is_refused_naming_the_field(client: Client) -> None:
    reply = _chat(client, [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert reply.status == 400, reply.text
    err = reply.json["error"]
    assert err["param"] == "messages[0].content[1].type" and "image_url" in err["message"]


def test_the_starter_bundle_keeps_its_generation_config(starter_bundle: Path,
                                                        service: InferenceService) -> None:
    manifest = read_manifest(starter_bundle)
    eos = manifest.tokenizer.eos_token_id
    # transformers wrote it from config.json: stop ids, nothing about sampling
    assert manifest.generation.eos_token_ids == (eos,)
    assert manifest.generation.temperature is None
    saved = json.loads((starter_bundle / "generation_config.json").read_text())
    assert saved["eos_token_id"] == eos
    assert service.codec.defaults.temperature == 1.0 and eos in service.codec.eos_ids

"""The context policy over HTTP: old turns dropped (and said so), or a 400; the context end."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig

pytestmark = pytest.mark.runtime


def _messages(turns: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "brief"}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i}"},
                 {"role": "assistant", "content": f"answer {i}"}]
    return [*msgs, {"role": "user", "content": "last one"}]


def _serve(bundle: Path, state: Path, policy: str) -> tuple[InferenceService, Client]:
    service = InferenceService(bundle, state, ServeConfig(
        listen="127.0.0.1:0", context_policy=policy))  # type: ignore[arg-type]
    service.start()
    assert service.address is not None
    return service, Client(*service.address, token=service.token)


def test_truncate_drops_oldest_turns_and_says_so(starter_bundle: Path, tmp_path: Path) -> None:
    service, client = _serve(starter_bundle, tmp_path, "truncate")
    try:
        ctx = service.generator.max_context
        body = {"messages": _messages(6), "max_tokens": 8, "temperature": 0}
        reply = client.post("/v1/chat/completions", body)
        assert reply.status == 200, reply.text
        dropped = reply.json["usage"]["truncated_messages"]
        assert dropped > 0 and dropped % 2 == 0  # whole turns: question and answer
        assert reply.headers["x-mobizo-truncated"] == str(dropped)
        assert reply.json["usage"]["prompt_tokens"] + 8 <= ctx
        stream = client.post("/v1/chat/completions", {**body, "stream": True})
        assert stream.status == 200 and stream.headers["x-mobizo-truncated"] == str(dropped)
        assert f'"truncated_messages": {dropped}' in stream.text
        short = client.post("/v1/chat/completions", {**body, "messages": _messages(0)})
        assert "truncated_messages" not in short.json["usage"]
        assert "x-mobizo-truncated" not in short.headers
        # generation that reaches the context end stops with "length"
        end = client.complete("go", max_tokens=10_000, ignore_eos=True, temperature=0)
        usage = end.json["usage"]
        assert end.json["choices"][0]["finish_reason"] == "length"
        assert usage["prompt_tokens"] + usage["completion_tokens"] == ctx
    finally:
        service.stop()


def test_error_policy_refuses_a_prompt_over_the_context(starter_bundle: Path,
                                                        tmp_path: Path) -> None:
    service, client = _serve(starter_bundle, tmp_path, "error")
    try:
        reply = client.post("/v1/chat/completions", {"messages": _messages(8), "max_tokens": 8})
        assert reply.status == 400, reply.text
        assert reply.json["error"]["max_context"] == service.generator.max_context
    finally:
        service.stop()

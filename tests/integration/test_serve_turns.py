"""Multi-turn chats and completion prompt forms through real HTTP on the starter bundle.

- A follow-up turn that sends back the reply the service generated re-reads only what
  follows it: the prompt cache holds the prompt and the generated ids (issue 18).
- ``timings`` count the prompt tokens fed (``prompt_n``) apart from those the cache reused
  (``cache_n``), so ``prompt_per_second`` is a prefill's speed, not a cache hit's.
- A completion's ``prompt`` may be a list of one string or token ids (OpenAI's and
  llama.cpp's forms); a batch of several prompts is a 400 that says one prompt per request.
- The answer does not wait out the store's batch window for its row's commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.io.http import Client
from agent.io.store import StoreConfig
from agent.services.inference.service import InferenceService, ServeConfig

pytestmark = pytest.mark.runtime

GREEDY: dict[str, Any] = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def service(starter_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[InferenceService]:
    state = tmp_path_factory.mktemp("serve-turns")
    # the longest batch window the config allows, and an ack wait as long: an answer that
    # waited the window out would take seconds
    svc = InferenceService(starter_bundle, state, ServeConfig(
        listen="127.0.0.1:0", store=StoreConfig(flush_interval_s=5),
        commit_ack_timeout_s=5))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def client(service: InferenceService) -> Client:
    assert service.address is not None
    return Client(*service.address, token=service.token)


def _ok(reply: Any) -> dict[str, Any]:
    assert reply.status == 200, reply.text
    return dict(reply.json)


def _chat(client: Client, messages: list[dict[str, str]], **kw: Any) -> dict[str, Any]:
    return _ok(client.post("/v1/chat/completions", {"messages": messages, **kw}))


def _id(client: Client, char: str) -> int:
    return int(_ok(client.post("/tokenize", {"content": char}))["tokens"][0])


def test_a_follow_up_reuses_the_reply_the_service_generated(service: InferenceService,
                                                            client: Client) -> None:
    history = [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}]
    z = _id(client, "Z")  # a reply whose text tokenizes back to the very ids generated
    first = _chat(client, history, max_tokens=8, logit_bias={str(z): 100}, **GREEDY)
    reply = first["choices"][0]["message"]["content"]
    assert reply == "Z" * 8
    follow = [*history, {"role": "assistant", "content": reply},
              {"role": "user", "content": "more"}]
    again = _chat(client, follow, max_tokens=4, **GREEDY)
    # the prompt and all but the reply's last token (picked, never fed) were resident
    held = len(service.codec.encode_chat(history)) + len(reply) - 1
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == held
    assert again["timings"]["cache_n"] == held
    assert again["timings"]["prompt_n"] == again["usage"]["prompt_tokens"] - held
    _chat(client, [{"role": "user", "content": "something else"}], max_tokens=2, **GREEDY)
    cold = _chat(client, follow, max_tokens=4, **GREEDY)  # the same turn, nothing reused
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] < held
    assert cold["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]


def test_timings_count_fed_and_reused_prompt_tokens_apart(client: Client) -> None:
    _ok(client.complete("Another prompt first", max_tokens=2, **GREEDY))
    prompt = "The quick brown fox jumps"
    cold = _ok(client.complete(prompt, max_tokens=2, **GREEDY))
    warm = _ok(client.complete(prompt, max_tokens=2, **GREEDY))
    n = cold["usage"]["prompt_tokens"]
    for body in (cold, warm):
        t, cached = body["timings"], body["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert t["cache_n"] == cached and t["prompt_n"] + t["cache_n"] == n
        assert t["prompt_per_second"] == pytest.approx(t["prompt_n"] / (t["prompt_ms"] / 1000))
    assert cold["timings"]["prompt_n"] >= n - 1  # at most a BOS in common with the other
    assert warm["timings"]["prompt_n"] == 1  # all but the last token came from the cache


def test_a_completion_prompt_may_be_a_list_of_one_string_or_token_ids(client: Client) -> None:
    text = "The fox"
    ids = _ok(client.post("/tokenize", {"content": text, "add_special": True}))["tokens"]
    want = _ok(client.complete(text, max_tokens=6, **GREEDY))
    for prompt in ([text], ids, [ids]):
        got = _ok(client.post("/v1/completions", {"prompt": prompt, "max_tokens": 6, **GREEDY}))
        assert got["choices"][0]["text"] == want["choices"][0]["text"], prompt
        assert got["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize(("prompt", "status", "says"), [
    (["one", "two"], 400, "batch of 2 prompts"),
    ([[1, 2], [3, 4]], 400, "batch of 2 prompts"),
    ([], 400, "empty list"),
    ([[]], 400, "no token ids"),
    ([5, 10**9], 400, "prompt[1]"),
    ([5, -1], 400, "prompt[1]"),
    (["text", 5], 422, "prompt"),
])
def test_batches_and_bad_prompt_lists_are_refused(client: Client, prompt: Any, status: int,
                                                  says: str) -> None:
    reply = client.post("/v1/completions", {"prompt": prompt, "max_tokens": 2})
    assert reply.status == status, reply.text
    error = reply.json["error"]
    assert says in error["message"]
    if status == 400:
        assert error["param"].startswith("prompt")
        if "batch" in says:
            assert "one prompt per request" in error["message"]


def test_the_answer_does_not_wait_out_the_store_window(service: InferenceService,
                                                       client: Client) -> None:
    t0 = time.monotonic()
    body = _ok(client.complete("quick", max_tokens=2, **GREEDY))
    assert time.monotonic() - t0 < 4.0, "the answer waited for the 5 s batch window"
    assert service.store is not None and service.store.get(body["id"]) is not None

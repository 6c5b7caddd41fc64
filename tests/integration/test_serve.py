"""The inference service end to end: real HTTP, the real ExecuTorch program, real SQLite."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.io.http import Client
from agent.io.store import StoreConfig
from agent.services.inference.service import InferenceService, ServeConfig

pytestmark = pytest.mark.runtime

GREEDY = {"temperature": 0}


def _start(bundle: Path, state: Path, **cfg: object) -> InferenceService:
    config = ServeConfig(listen="127.0.0.1:0", **cfg)  # type: ignore[arg-type]
    service = InferenceService(bundle, state, config)
    service.start()
    return service


def _client(service: InferenceService) -> Client:
    assert service.address is not None
    return Client(*service.address, token=service.token)


@pytest.fixture(scope="module")
def service(starter_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[InferenceService]:
    state = tmp_path_factory.mktemp("serve-state")
    svc = _start(starter_bundle, state, unix_socket=state / "serve.sock",
                 max_prompt_chars=20_000, max_body_bytes=64 * 1024)
    yield svc
    svc.stop()


@pytest.fixture
def client(service: InferenceService) -> Client:
    return _client(service)


def test_chat_round_trip_is_stored(service: InferenceService, client: Client) -> None:
    reply = client.chat("hello there", max_tokens=12, **GREEDY)
    assert reply.status == 200, reply.text
    body = reply.json
    iid = body["id"]
    assert reply.headers["x-interaction-id"] == iid
    assert body["object"] == "chat.completion"
    text = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] <= 12
    assert body["adapter_version"] == reply.headers["x-adapter-version"] == "initial"
    row = service.store.get(iid)  # type: ignore[union-attr]
    assert row is not None, "a row must be committed before the answer is sent"
    assert row["response"] == text
    assert row["messages"] == [{"role": "user", "content": "hello there"}]
    assert row["adapter_version"] == "initial" and row["latency_ms"] > 0
    assert row["completion_tokens"] == body["usage"]["completion_tokens"]


def test_greedy_is_deterministic_and_stream_matches(service: InferenceService,
                                                    client: Client) -> None:
    a = client.complete("The quick brown fox", max_tokens=16, **GREEDY).json
    b = client.complete("The quick brown fox", max_tokens=16, **GREEDY).json
    text = a["choices"][0]["text"]
    assert text == b["choices"][0]["text"]
    streamed = client.complete("The quick brown fox", max_tokens=16, stream=True, **GREEDY)
    assert streamed.status == 200
    assert streamed.headers["content-type"] == "text/event-stream"
    events = streamed.events()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    iid = streamed.headers["x-interaction-id"]
    assert {c["id"] for c in chunks} == {iid}
    assert service.store.get(iid)["response"] == text  # type: ignore[index,union-attr]


def test_chat_stream_and_stop_string(client: Client) -> None:
    full = client.chat("count", max_tokens=24, **GREEDY).json["choices"][0]["message"]["content"]
    if len(full) < 6:
        pytest.skip("the random starter model ended too early to place a stop string")
    stop = full[3:5]
    cut = full[: full.find(stop)]
    reply = client.chat("count", max_tokens=24, stop=[stop], stream=True, **GREEDY)
    events = reply.events()
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == cut
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_sampling_with_seed_is_reproducible(client: Client) -> None:
    kw = {"max_tokens": 10, "temperature": 0.9, "top_p": 0.8, "seed": 11}
    assert client.complete("abc", **kw).json["choices"][0]["text"] == \
        client.complete("abc", **kw).json["choices"][0]["text"]


def test_feedback(service: InferenceService, client: Client) -> None:
    iid = client.complete("2+2=", max_tokens=4, **GREEDY).json["id"]
    ok = client.post("/v1/feedback", {"id": iid, "rating": "down", "correction": "4"})
    assert ok.status == 200, ok.text
    row = service.store.get(iid)  # type: ignore[union-attr]
    assert row["feedback"] == "down" and row["correction"] == "4"  # type: ignore[index]
    assert client.post("/v1/feedback", {"id": "int-nope", "rating": "up"}).status == 404
    assert client.post("/v1/feedback", {"id": iid, "rating": "meh"}).status == 422
    assert client.post("/v1/feedback", {"id": iid}).status == 422


def test_models_health_and_unix_socket(service: InferenceService, client: Client) -> None:
    models = client.get("/v1/models").json["data"][0]
    assert models["adapter_version"] == "initial" and models["bundle_id"] == service.bundle_id
    unix = Client(unix=service.config.unix_socket)
    health = unix.get("/health").json
    assert health["status"] == "ok" and health["queue_depth"] >= 0
    before = health["last_request_at"] or 0
    assert unix.complete("hi", max_tokens=2).status == 200
    assert unix.get("/health").json["last_request_at"] > before
    assert client.get("/nope").status == 404


def test_bad_inputs(service: InferenceService, client: Client) -> None:
    bad = client.post("/v1/chat/completions", raw=b'{"messages": [')
    assert bad.status == 400 and "malformed JSON" in bad.json["error"]["message"]
    typed = client.post("/v1/completions", {"prompt": "x", "max_tokens": "ten"})
    assert typed.status == 422 and "max_tokens" in typed.json["error"]["message"]
    assert client.post("/v1/chat/completions", {"messages": []}).status == 422
    big_body = client.post("/v1/completions", raw=json.dumps({"prompt": "x" * 70_000}).encode())
    assert big_body.status == 413
    big_prompt = client.complete("y" * 30_000)
    assert big_prompt.status == 413 and "20000" in big_prompt.json["error"]["message"]
    ctx = service.generator.max_context
    long = client.complete("z" * (ctx + 5))
    assert long.status == 400
    err = long.json["error"]
    assert err["max_context"] == ctx and err["prompt_tokens"] >= ctx
    assert str(ctx) in err["message"]
    # the service still answers after all that
    assert client.complete("ok", max_tokens=2).status == 200


def test_queue_full_answers_503(starter_bundle: Path, tmp_path: Path) -> None:
    svc = _start(starter_bundle, tmp_path, max_queue=1)
    try:
        client = _client(svc)
        statuses: list[int] = []
        retry: list[str] = []

        def one() -> None:
            r = client.complete("flood", max_tokens=64, **GREEDY)
            statuses.append(r.status)
            if r.status == 503:
                retry.append(r.headers.get("retry-after", ""))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 503 in statuses and 200 in statuses
        assert set(statuses) <= {200, 503}
        assert all(r.isdigit() and int(r) >= 1 for r in retry)
    finally:
        svc.stop()


def test_store_full_evicts_oldest_and_keeps_serving(starter_bundle: Path,
                                                    tmp_path: Path) -> None:
    svc = _start(starter_bundle, tmp_path, store=StoreConfig(max_total_bytes=4096))
    try:
        client = _client(svc)
        ids = []
        for i in range(30):
            r = client.complete(f"fill the store {i} " + "x" * 80, max_tokens=8, **GREEDY)
            assert r.status == 200
            ids.append(r.json["id"])
        assert svc.store is not None
        svc.store.flush()
        counts = svc.store.counts()
        assert counts["bytes"] <= 4096 and counts["evicted"] > 0
        assert svc.store.get(ids[0]) is None and svc.store.get(ids[-1]) is not None
    finally:
        svc.stop()


def test_capture_off_stores_nothing(starter_bundle: Path, tmp_path: Path) -> None:
    svc = _start(starter_bundle, tmp_path, store=StoreConfig(capture=False))
    try:
        r = _client(svc).complete("private", max_tokens=2)
        assert r.status == 200 and svc.store is None
        assert not (tmp_path / "interactions.sqlite3").exists()
        assert _client(svc).post("/v1/feedback", {"id": r.json["id"], "rating": "up"}).status \
            == 404
    finally:
        svc.stop()


def test_bad_adapter_is_refused_and_old_keeps_serving(starter_bundle: Path,
                                                      tmp_path: Path) -> None:
    from tests.integration.serve_adapters import corrupt_copy, foreign_adapter, publish_value

    out = tmp_path / "hook.txt"
    hook = [sys.executable, "-c",
            f"import os; open({str(out)!r}, 'a').write(os.environ['MOBIZO_ADAPTER_VERSION'] + "
            "' ' + os.environ['MOBIZO_BUNDLE_ID'] + '\\n')"]
    svc = _start(starter_bundle, tmp_path / "state", watch_interval_s=0.05,
                 post_switch_command=hook)
    try:
        client = _client(svc)
        good = publish_value(svc.registry, starter_bundle, tmp_path / "good", 0.01)
        _wait(lambda: svc.slot.version == good)
        _wait(lambda: out.exists() and good in out.read_text())
        assert svc.bundle_id in out.read_text()
        for bad, reason in ((corrupt_copy(svc.registry, good), "corrupt"),
                            (foreign_adapter(svc.registry, tmp_path), "LoRA-A")):
            _write_pointer(svc.registry.pointer_path, bad)
            _wait(lambda reason=reason: reason in (svc.slot.last_error or ""))
            assert svc.slot.version == good
            reply = client.complete("still here", max_tokens=2)
            assert reply.status == 200 and reply.json["adapter_version"] == good
            assert reason in client.get("/health").json["adapter"]["last_error"]
    finally:
        svc.stop()


def _write_pointer(path: Path, version: str) -> None:
    """What a file-only publisher does: atomically replace the pointer."""
    tmp = path.with_name(".tmp-test-pointer")
    tmp.write_text(json.dumps({"version": version, "history": [version],
                               "switched_at": time.time()}))
    tmp.rename(path)


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")

"""``GET /metrics`` of the real inference service (issue 19 item 1), scraped over real HTTP.

The starter bundle on the real ExecuTorch runtime and SQLite, on 127.0.0.1 and a unix socket;
each scrape is parsed with prometheus-client's own parser, and the counters must move after
real requests: generations (streamed and not), a refused correction, an unknown route and an
adapter swap. The token rule is the rest of the API's: 401 on TCP without it, none on the
socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig
from tests.integration.metrics_scrape import Samples, labelled, parse, value
from tests.integration.serve_adapters import publish_value

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def service(starter_bundle: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[InferenceService]:
    state = tmp_path_factory.mktemp("serve-metrics")
    svc = InferenceService(starter_bundle, state, ServeConfig(
        listen="127.0.0.1:0", unix_socket=state / "serve.sock", watch_interval_s=0.05,
        corrections_per_minute=1))
    svc.start()
    yield svc
    svc.stop()


def _client(svc: InferenceService) -> Client:
    assert svc.address is not None
    return Client(*svc.address, token=svc.token)


def _scrape(client: Client) -> Samples:
    reply = client.get("/metrics")
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(reply.text)


def test_metrics_need_the_token_on_tcp_and_not_on_the_socket(service: InferenceService) -> None:
    assert service.address is not None
    for client in (Client(*service.address), Client(*service.address, token="w" * 43)):
        reply = client.get("/metrics")
        assert reply.status == 401, reply.text
        assert reply.headers["www-authenticate"] == "Bearer"
    assert service.config.unix_socket is not None
    unix = Client(unix=Path(service.config.unix_socket))
    samples = _scrape(unix)
    assert value(samples, "mobizo_inference_queue_depth") == 0
    # the refusals were counted, under the route they asked for
    after = _scrape(_client(service))
    assert value(after, "mobizo_inference_requests_total", endpoint="/metrics",
                 status="401") >= 2


def test_counters_move_after_real_requests(service: InferenceService, starter_bundle: Path,
                                           tmp_path: Path) -> None:
    client = _client(service)
    before = _scrape(client)

    chat = client.chat("hello there", max_tokens=4, temperature=0)
    assert chat.status == 200, chat.text
    stream = client.complete("once upon", max_tokens=3, temperature=0, stream=True)
    assert stream.status == 200 and stream.events()[-1] == "[DONE]"
    usage = chat.json["usage"]
    streamed = stream.events()[-2]["usage"]
    assert client.get("/no/such/route").status == 404
    # corrections_per_minute = 1: the second correction is refused (429), and counted
    first = client.post("/v1/feedback", {"id": chat.json["id"], "rating": "down",
                                         "correction": "better"})
    assert first.status in (200, 202), first.text
    second = client.post("/v1/feedback", {"id": chat.json["id"], "rating": "down",
                                          "correction": "best"})
    assert second.status == 429, second.text

    after = _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mobizo_inference_requests_total", endpoint="/v1/chat/completions",
                 status="200") == 1
    assert moved("mobizo_inference_requests_total", endpoint="/v1/completions",
                 status="200") == 1
    assert moved("mobizo_inference_requests_total", endpoint="other", status="404") == 1
    assert moved("mobizo_inference_requests_total", endpoint="/v1/feedback", status="429") == 1
    assert moved("mobizo_inference_rejected_total", reason="rate_limited") == 1
    assert moved("mobizo_inference_prompt_tokens_total") == \
        usage["prompt_tokens"] + streamed["prompt_tokens"]
    assert moved("mobizo_inference_generated_tokens_total") == \
        usage["completion_tokens"] + streamed["completion_tokens"]
    assert moved("mobizo_inference_time_to_first_token_seconds_count") == 2
    assert moved("mobizo_inference_time_to_first_token_seconds_sum") > 0
    assert moved("mobizo_inference_time_per_output_token_seconds_count") == 2
    # cumulative buckets: +Inf holds every observation
    assert moved("mobizo_inference_time_to_first_token_seconds_bucket", le="+Inf") == 2
    assert value(after, "mobizo_inference_queue_depth") == 0
    assert labelled(after, "mobizo_inference_adapter_info", "version") == {
        service.slot.version: 1.0}

    # an adapter published to the registry is swapped in without a restart, and counted
    version = publish_value(service.registry, starter_bundle, tmp_path / "a1", 0.01)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        swapped = _scrape(client)
        if labelled(swapped, "mobizo_inference_adapter_info", "version") == {version: 1.0}:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"adapter {version} was not swapped in within 10 s")
    assert value(swapped, "mobizo_inference_adapter_swaps_total") - \
        value(after, "mobizo_inference_adapter_swaps_total") == 1


def test_each_request_of_a_kept_alive_connection_and_a_broken_one_is_counted(
        service: InferenceService) -> None:
    """Counted per request, not per connection (keep-alive reuses one handler), and before
    the answer goes out; a request line too broken to parse counts as ``other``."""
    import http.client
    import socket

    client = _client(service)
    before = _scrape(client)
    assert service.address is not None
    host, port = service.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {service.token}"}
        for path, status in (("/no/such/route", 404), ("/v1/models", 200)):
            conn.request("GET", path, headers=headers)
            reply = conn.getresponse()
            reply.read()
            assert reply.status == status
    finally:
        conn.close()
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(b"NOT A REQUEST LINE AT ALL\r\n\r\n")
        # a line the server cannot parse is answered the HTTP/0.9 way: the error page alone
        answer = raw.recv(4096)
        assert b"Error code: 400" in answer, answer
    after = _scrape(client)

    def moved(**labels: str) -> float:
        return (value(after, "mobizo_inference_requests_total", **labels)
                - value(before, "mobizo_inference_requests_total", **labels))

    assert moved(endpoint="other", status="404") == 1
    assert moved(endpoint="/v1/models", status="200") == 1
    assert moved(endpoint="other", status="400") == 1

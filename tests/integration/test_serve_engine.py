"""The service's engine child process (agent/io/engine.py): a killed engine fails only the
request in progress, a released program is an engine that exited, and the inline mode serves
the same text. Real service, real HTTP, real ExecuTorch runtime, real SQLite."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.io.http import Client, Reply
from agent.services.inference.service import InferenceService, ServeConfig
from tests.io.test_engine import _gone

pytestmark = pytest.mark.runtime

PROMPT = "my bike is"


def _start(bundle: Path, state: Path, **cfg: Any) -> tuple[InferenceService, Client]:
    svc = InferenceService(bundle, state, ServeConfig(listen="127.0.0.1:0", **cfg))
    svc.start()
    assert svc.address is not None
    return svc, Client(*svc.address, token=svc.token)


def _ask(client: Client, max_tokens: int = 8) -> Reply:
    return client.complete(PROMPT, max_tokens=max_tokens, temperature=0)


def _program(client: Client) -> dict[str, Any]:
    return dict(client.health()["program"])


def test_a_killed_engine_fails_one_request_and_the_next_starts_a_new_one(
    starter_bundle: Path, tmp_path: Path
) -> None:
    svc, client = _start(starter_bundle, tmp_path / "state")
    try:
        first = _ask(client)
        assert first.status == 200, first.text
        expected = first.json["choices"][0]["text"]
        pid = _program(client)["engine_pid"]
        assert pid and pid != os.getpid() and svc.runtime_threads
        # stop the engine, let a request reach it, then kill it mid-request
        os.kill(pid, signal.SIGSTOP)
        replies: list[Reply] = []
        asking = threading.Thread(target=lambda: replies.append(_ask(client)))
        asking.start()
        deadline = time.monotonic() + 30
        while not svc.worker.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the worker is in its forward, blocked on the stopped engine
        os.kill(pid, signal.SIGKILL)
        asking.join(60)
        failed = replies[0]
        assert failed.status == 500, failed.text
        message = failed.json["error"]["message"]
        assert f"inference engine (pid {pid}) died" in message and "SIGKILL" in message
        again = _ask(client)  # a new engine, the same greedy text
        assert again.status == 200 and again.json["choices"][0]["text"] == expected
        state = _program(client)
        assert state["restarts"] == 1 and state["engine_pid"] not in (None, pid)
        # killed while idle: noticed before the next request, which is answered
        os.kill(state["engine_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10  # reaped once its last thread is gone
        while _program(client)["resident"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _program(client)["resident"] is False  # /health says so, and starts nothing
        assert _ask(client).status == 200 and _program(client)["restarts"] == 2
        assert svc.store is not None and svc.store.flush()
        for reply in (first, again):  # nothing stored was lost
            assert svc.store.exists(reply.json["id"])
    finally:
        svc.stop()


def test_a_released_program_is_an_engine_that_exited(starter_bundle: Path,
                                                     tmp_path: Path) -> None:
    svc, client = _start(starter_bundle, tmp_path / "state")
    try:
        expected = _ask(client).json["choices"][0]["text"]
        pid = _program(client)["engine_pid"]
        assert client.set_program_resident(False).status == 200
        assert _gone(pid, 1.0), "the engine must have exited when the release returns"
        for _ in range(3):  # the daemon's /health polls never start an engine
            state = _program(client)
            assert state["resident"] is False and state["engine_pid"] is None
        reply = _ask(client)  # a request during a burst starts a new engine
        assert reply.status == 200 and reply.json["choices"][0]["text"] == expected
        state = _program(client)
        assert state["resident"] and state["engine_pid"] != pid and state["last_load_s"] > 0
        assert state["restarts"] == 0 and state["releases"] == 1
    finally:
        svc.stop()
    assert _gone(state["engine_pid"], 1.0), "the engine must exit with the service"


def test_the_inline_engine_serves_the_same_text(starter_bundle: Path, tmp_path: Path) -> None:
    texts, threads = [], []
    for engine in ("process", "inline"):
        svc, client = _start(starter_bundle, tmp_path / engine, engine=engine)
        try:
            reply = _ask(client, 12)
            assert reply.status == 200, reply.text
            texts.append(reply.json["choices"][0]["text"])
            threads.append(client.health()["runtime_threads"])
            pid = _program(client)["engine_pid"]
            assert (pid is None) == (engine == "inline")
        finally:
            svc.stop()
    assert texts[0] == texts[1]
    assert threads[0] == os.cpu_count()  # the engine's own pool: one thread per core

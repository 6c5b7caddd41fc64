"""One copy of the weights during a burst: the service releases its program while the trainer
runs, and a request that arrives meanwhile is answered (the program loads again) and stops
the burst. Real service, real daemon process, real trainer, real ExecuTorch runtime.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig
from tests.integration.daemon_support import (
    DaemonProcess,
    FakeDevice,
    base_config,
    seed_store,
    write_config,
)

pytestmark = [pytest.mark.runtime]

PROMPT = "my bike is"


def _ask(client: Client) -> tuple[str, float]:
    t0 = time.perf_counter()
    reply = client.complete(PROMPT, max_tokens=6, temperature=0)
    assert reply.status == 200, reply.text
    return reply.json["choices"][0]["text"], time.perf_counter() - t0


def _program(client: Client) -> dict[str, Any]:
    return dict(client.health()["program"])


def test_release_and_reload_never_drop_a_request(starter_bundle: Path, tmp_path: Path) -> None:
    """Releases racing a stream of requests: every request is answered, with the same text."""
    svc = InferenceService(starter_bundle, tmp_path / "state", ServeConfig(listen="127.0.0.1:0"))
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        expected, _ = _ask(client)
        answers: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                answers.append(_ask(client)[0])

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(5):
            reply = client.set_program_resident(False)
            assert reply.status in (200, 409), reply.text  # 409: a request held it too long
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
        assert answers and set(answers) == {expected}
        assert client.set_program_resident(False).status == 200
        assert _program(client)["resident"] is False
        assert _ask(client)[0] == expected  # loads again, same greedy text
        state = _program(client)
        assert state["resident"] is True and state["loads"] >= 2 and state["releases"] >= 1
        bad = client.post("/v1/admin/program", {"resident": "no"})
        assert bad.status == 400 and "resident" in bad.text
    finally:
        svc.stop()


@contextlib.contextmanager
def _service_beside_a_daemon(bundle: Path, tmp_path: Path, steps_per_burst: int
                             ) -> Iterator[tuple[Client, Callable[[], DaemonProcess]]]:
    """A real service on a seeded store, its client, and a starter for a real daemon whose
    burst may begin 1.2 s after the last request; both are stopped on the way out."""
    device = FakeDevice(tmp_path / "device")
    state = tmp_path / "state"
    seed_store(state, n=24)
    svc = InferenceService(bundle, state, ServeConfig(listen="127.0.0.1:0"))
    svc.start()
    daemons: list[DaemonProcess] = []

    def start_daemon() -> DaemonProcess:
        assert svc.address is not None
        sections = base_config(tmp_path, device, bundle, url=f"http://127.0.0.1:{svc.address[1]}",
                               constraints={"idle_minutes": 0.02},
                               training={"steps_per_burst": steps_per_burst})
        daemon = DaemonProcess(write_config(tmp_path / "agent.toml", sections), state,
                               tmp_path / "daemon.log", tick=0.2)
        daemons.append(daemon)
        daemon.wait_socket()
        return daemon

    try:
        assert svc.address is not None
        yield Client(*svc.address, token=svc.token), start_daemon
    finally:
        for daemon in daemons:
            daemon.kill()
        svc.stop()


def test_a_request_during_a_burst_is_answered_and_stops_it(
    starter_bundle: Path, tmp_path: Path
) -> None:
    with _service_beside_a_daemon(starter_bundle, tmp_path, 200) as (client, start_daemon):
        expected, warm_s = _ask(client)
        # a burst may start 1.2 s after the last request; one arriving during it stops it
        daemon = start_daemon()
        daemon.wait_status(lambda s: s["state"] == "training"
                           and (s.get("progress") or {}).get("step", 0) >= 1, 120, "a step")
        assert _program(client)["resident"] is False  # the trainer holds the only copy
        text, during_s = _ask(client)
        assert text == expected
        reload_s = _program(client)["last_load_s"]
        stopped = daemon.wait_status(
            lambda s: (s.get("last_burst") or {}).get("outcome") == "stopped", 60, "the stop")
        assert "user active" in stopped["last_burst"]["reason"]
        print(f"request during a burst: {during_s * 1000:.0f} ms (warm {warm_s * 1000:.0f} ms, "
              f"program load {reload_s * 1000:.0f} ms)")
        assert daemon.terminate() == 0


def test_the_service_is_warm_again_once_the_burst_and_its_evaluation_end(
    starter_bundle: Path, tmp_path: Path
) -> None:
    """The daemon releases the program for the burst and asks it back when the board is quiet
    again (no trainer, no evaluator): the user's next request finds a warm engine."""
    with _service_beside_a_daemon(starter_bundle, tmp_path, 2) as (client, start_daemon):
        _ask(client)
        before = _program(client)
        daemon = start_daemon()
        daemon.wait_status(lambda s: s.get("last_run") is not None
                           or (s.get("last_burst") or {}).get("outcome") is not None,
                           180, "the burst to end")
        deadline = time.monotonic() + 60
        program = _program(client)  # /health never loads the program itself
        while not program["resident"] and time.monotonic() < deadline:
            time.sleep(0.2)
            program = _program(client)
        assert program["resident"], program
        assert program["releases"] > before["releases"]
        assert program["loads"] > before["loads"]
        assert "loaded its program again after the burst" in daemon.log()
        assert daemon.terminate() == 0

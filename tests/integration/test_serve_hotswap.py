"""Hot-swap under load: adapters published and rolled back while clients keep asking.

Zero failed requests; every response's adapter version was active while it ran; and, since
generation is greedy, every response of one version is the same text (a request that switched
adapters half-way would not be).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from agent.io.http import Client
from agent.services.inference.service import InferenceService, ServeConfig
from tests.integration.serve_adapters import publish_value

pytestmark = pytest.mark.runtime

SLACK_S = 0.5  # the watcher polls every 50 ms; allow for a loaded 2-core machine


def test_hot_swap_under_load(starter_bundle: Path, tmp_path: Path) -> None:
    svc = InferenceService(starter_bundle, tmp_path / "state",
                           ServeConfig(listen="127.0.0.1:0", watch_interval_s=0.05))
    svc.start()
    assert svc.address is not None
    client = Client(*svc.address, token=svc.token)
    stop = threading.Event()
    results: list[tuple[float, float, int, str, str]] = []
    lock = threading.Lock()

    def load(n: int) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            stream = n % 2 == 1
            r = client.complete("swap me", max_tokens=6, temperature=0, stream=stream)
            t1 = time.monotonic()
            if r.status != 200:
                text, version = r.text, ""
            elif stream:
                events = r.events()
                text = "".join(e["choices"][0]["text"] for e in events[:-1])
                version = r.headers["x-adapter-version"]
                assert {e["adapter_version"] for e in events[:-1]} == {version}
            else:
                text, version = r.json["choices"][0]["text"], r.json["adapter_version"]
            with lock:
                results.append((t0, t1, r.status, version, text))

    # (time the change began, version) — the service may switch any time after that
    timeline: list[tuple[float, str]] = [(0.0, "initial")]
    threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        reg = svc.registry
        for i, step in enumerate(["publish", "publish", "rollback", "publish", "rollback",
                                  "rollback", "publish"]):
            began = time.monotonic()
            if step == "publish":
                version = publish_value(reg, starter_bundle, tmp_path / f"a{i}", 0.02 * (i + 1))
            else:
                version = reg.rollback()
            timeline.append((began, version))
            if i % 2 == 0:  # half the switches by control request, half by the watcher
                r = client.post("/v1/admin/reload-adapter")
                assert r.status == 200 and r.json["version"] == version
            time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join()
        svc.stop()

    assert results, "no request completed"
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[0]}"
    served = {r[3] for r in results}
    assert len(served) >= 3, f"load did not overlap the switches: only {served}"
    for t0, t1, _, version, _ in results:
        assert _active_during(timeline, version, t0, t1), (version, t0, t1, timeline)
    texts: dict[str, set[str]] = defaultdict(set)
    for *_, version, text in results:
        texts[version].add(text)
    assert all(len(t) == 1 for t in texts.values()), texts


def _active_during(timeline: list[tuple[float, str]], version: str, t0: float,
                   t1: float) -> bool:
    """Was ``version`` the active one at some moment of [t0, t1] (with switch slack)?"""
    for k, (began, v) in enumerate(timeline):
        if v != version:
            continue
        ended = timeline[k + 1][0] + SLACK_S if k + 1 < len(timeline) else float("inf")
        if began <= t1 and ended >= t0:
            return True
    return False

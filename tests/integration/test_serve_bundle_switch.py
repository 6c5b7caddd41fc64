"""The service follows its bundle link: switched while clients keep asking, no request fails,
the new bundle's id, model and base adapter serve, and a switch back does the same (issue 19
item 2: ``push-bundle`` switches ``<state>/bundles/current``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.io.bundle_files import read_manifest
from agent.io.http import Client
from agent.services.daemon.artifact_activate import switch_link
from agent.services.inference.service import InferenceService, ServeConfig
from tests.integration.bundle_copies import relabeled_copy
from tests.integration.serve_adapters import publish_value

pytestmark = pytest.mark.runtime


def _wait_bundle(client: Client, bundle_id: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        health = client.health()
        if health["bundle_id"] == bundle_id:
            return health  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"still serving {health['bundle_id']}: {health}"
        time.sleep(0.05)


def test_service_follows_the_bundle_link_under_load(starter_bundle: Path,
                                                    tmp_path: Path) -> None:
    bundles = tmp_path / "state" / "bundles"
    bundles.mkdir(parents=True)
    first = relabeled_copy(starter_bundle, bundles / "first", "first")
    second = relabeled_copy(starter_bundle, bundles / "second", "second")
    first_id, second_id = read_manifest(first).bundle_id, read_manifest(second).bundle_id
    assert first_id != second_id
    link = bundles / "current"
    switch_link(link, "first")
    svc = InferenceService(link, tmp_path / "state",
                           ServeConfig(listen="127.0.0.1:0", watch_interval_s=0.05))
    # an adapter trained for the first bundle: it cannot serve on the second
    trained = publish_value(svc.registry, first, tmp_path / "a1", 0.02, activate=True)
    svc.slot.reload()
    svc.start()
    assert svc.address is not None
    client = Client(*svc.address, token=svc.token, timeout=120)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def load(n: int) -> None:
        while not stop.is_set():
            r = client.complete("switch me", max_tokens=6, temperature=0, stream=n % 2 == 1)
            if r.status == 200 and n % 2 == 1:
                r.events()  # a stream read to its end: it was not cut by the switch
            results.append((r.status, r.text[:200] if r.status != 200 else ""))

    threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert client.health()["adapter"]["version"] == trained
        switch_link(link, "second")
        health = _wait_bundle(client, second_id)
        assert health["model"] == "second"
        assert health["adapter"]["version"] == "initial"  # the trained one does not fit
        assert "does not fit the new bundle" in str(health["adapter"]["last_error"])
        assert health["bundle"]["path"] == str(second.resolve())
        time.sleep(0.5)  # requests answered by the second bundle
        switch_link(link, "first")  # what a rollback does
        health = _wait_bundle(client, first_id)
        assert health["adapter"]["version"] == trained  # it fits again
        assert health["bundle"]["switches"] == 2 and health["bundle"]["last_error"] is None
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        svc.stop()
    failed = [r for r in results if r[0] != 200]
    assert results and not failed, failed[:5]
    assert svc.program.loads == 3  # at start, on the switch, on the switch back


def test_a_bundle_that_does_not_load_leaves_the_old_one_serving(starter_bundle: Path,
                                                                tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    relabeled_copy(starter_bundle, bundles / "good", "good")
    broken = relabeled_copy(starter_bundle, bundles / "broken", "broken")
    (broken / "infer.pte").write_bytes(b"not a program")
    link = bundles / "current"
    switch_link(link, "good")
    svc = InferenceService(link, tmp_path / "state",
                           ServeConfig(listen="127.0.0.1:0", watch_interval_s=0.05))
    svc.start()
    assert svc.address is not None
    client = Client(*svc.address, token=svc.token, timeout=120)
    try:
        good_id = client.health()["bundle_id"]
        switch_link(link, "broken")
        deadline = time.monotonic() + 60
        while client.health()["bundle"]["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = client.health()
        assert health["bundle_id"] == good_id
        assert "could not serve the bundle" in health["bundle"]["last_error"]
        r = client.complete("still here", max_tokens=2, temperature=0)
        assert r.status == 200, r.text  # the old program loaded again
    finally:
        svc.stop()

"""``kill -9`` of the running service loses no interaction whose answer was delivered."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.io.http import Client

pytestmark = pytest.mark.runtime


def test_kill_9_loses_no_committed_interaction(starter_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "WARNING", "serve",
         "--bundle", str(starter_bundle), "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("serving on "), line
        host, port = line.removeprefix("serving on ").rsplit(":", 1)
        client = Client(host, int(port), timeout=30, token_file=state / "inference.token")
        delivered: list[str] = []
        lock = threading.Lock()

        def load() -> None:
            while True:
                try:
                    r = client.complete("remember me", max_tokens=4, temperature=0)
                except OSError:
                    return  # the service is gone
                if r.status == 200:
                    with lock:
                        delivered.append(r.json["id"])

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(delivered) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of a stream of writes
        proc.wait()
        for t in threads:
            t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(delivered) >= 20
    conn = sqlite3.connect(state / "interactions.sqlite3")
    stored = {r[0] for r in conn.execute("SELECT id FROM interactions")}
    missing = set(delivered) - stored
    assert not missing, f"{len(missing)} delivered interactions lost"

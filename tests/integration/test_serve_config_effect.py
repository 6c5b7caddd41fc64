"""``[inference]`` settings take effect in a real ``mobizo-agent serve --config`` process.

threads sizes the ExecuTorch pool (``/health`` says how big it is), max_context bounds the
prompt (a prompt that fits the bundle but not the config is refused, as the service's
context policy refuses a completion prompt), max_new_tokens bounds a request that names no
``max_tokens``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.io.http import Client

pytestmark = pytest.mark.runtime

MAX_CONTEXT = 48  # the starter test bundle is exported with 128
MAX_NEW_TOKENS = 3


@pytest.fixture
def served(starter_bundle: Path, tmp_path: Path) -> Iterator[Client]:
    state = tmp_path / "state"
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[paths]\nstate_dir = "{state}"\n'
        f'[service]\nbundle_dir = "{starter_bundle}"\n'
        f'[inference]\nthreads = 1\nmax_context = {MAX_CONTEXT}\n'
        f'max_new_tokens = {MAX_NEW_TOKENS}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "WARNING", "serve", "--config", str(toml),
         "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("serving on "), line
        host, port = line.removeprefix("serving on ").rsplit(":", 1)
        yield Client(host, int(port), timeout=60, token_file=state / "inference.token")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_inference_settings_take_effect(served: Client) -> None:
    health = served.health()
    assert health["runtime_threads"] == 1  # [inference] threads sized the pool

    reply = served.complete("hello", temperature=0)  # no max_tokens: [inference] max_new_tokens
    assert reply.status == 200, reply.json
    assert 1 <= reply.json["usage"]["completion_tokens"] <= MAX_NEW_TOKENS

    long = "the quick brown fox " * 4  # about 80 tokens
    reply = served.complete(long, max_tokens=1, temperature=0)
    assert reply.status == 400, reply.json  # fits the bundle's 128 positions, not the config's
    error = reply.json["error"]
    assert error["max_context"] == MAX_CONTEXT, error
    assert MAX_CONTEXT <= error["prompt_tokens"] < 128, error

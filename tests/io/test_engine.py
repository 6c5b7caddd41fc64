"""agent.io.engine: the inference program in an engine child process, against the real
ExecuTorch runtime and a real (starter) bundle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BundleError
from agent.io.bundle_files import read_manifest
from agent.io.engine import EngineGone, EngineProgram, describe_exit
from agent.io.runtime import InferProgram

pytestmark = pytest.mark.runtime


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` has exited (or is a zombie nobody reaped) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def engine(starter_bundle: Path) -> EngineProgram:
    program = EngineProgram(starter_bundle, threads=1)
    yield program
    program.close()


def test_the_engine_gives_the_inline_programs_logits(starter_bundle: Path,
                                                     engine: EngineProgram) -> None:
    inline = InferProgram(starter_bundle)
    assert (engine.max_context, engine.vocab_size) == (inline.max_context, inline.vocab_size)
    assert engine.threads == 1 and engine.load_s > 0
    rng = np.random.default_rng(0)
    lora = rng.standard_normal(read_manifest(starter_bundle).lora.num_params).astype(np.float32)
    ids = [1, 5, 9, 2, 7, 3, 11, 4]
    want = inline.forward(ids, 0, lora)
    got = engine.forward(ids, 0, lora)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # the same program on the same data: bit-equal
    np.testing.assert_array_equal(engine.forward([6], len(ids), lora),
                                  inline.forward([6], len(ids), lora))
    got[0] = 1e9  # the caller may change the logits it gets (a fresh, writable array)
    engine.reset()


def test_the_adapter_travels_once_per_array_not_per_token(starter_bundle: Path,
                                                          engine: EngineProgram) -> None:
    n = read_manifest(starter_bundle).lora.num_params
    a, b = np.zeros(n, np.float32), np.full(n, 0.01, np.float32)
    sent = engine.lora_sent
    first = engine.forward([1, 2, 3], 0, a)
    for pos in range(3, 8):
        engine.forward([4], pos, a)
    assert engine.lora_sent == sent + 1
    other = engine.forward([1, 2, 3], 0, b)
    assert engine.lora_sent == sent + 2 and not np.array_equal(first, other)
    np.testing.assert_array_equal(engine.forward([1, 2, 3], 0, a), first)


def test_bad_calls_fail_that_call_only(starter_bundle: Path, engine: EngineProgram) -> None:
    n = read_manifest(starter_bundle).lora.num_params
    with pytest.raises(ValueError, match="do not fit the context"):
        engine.forward([1], engine.max_context, np.zeros(n, np.float32))
    with pytest.raises(ValueError, match="lora_b has 3 values"):
        engine.forward([1], 0, np.zeros(3, np.float32))
    assert engine.forward([1], 0, np.zeros(n, np.float32)).shape == (engine.vocab_size,)
    assert engine.alive


def test_a_bad_bundle_is_refused_with_the_runtimes_own_message(starter_bundle: Path,
                                                               tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(starter_bundle, bundle)
    (bundle / read_manifest(bundle).infer.program).unlink()  # type: ignore[union-attr]
    with pytest.raises(BundleError) as inline:
        InferProgram(bundle)
    with pytest.raises(BundleError) as engine:
        EngineProgram(bundle)
    assert str(engine.value) == str(inline.value)
    assert "re-export" in str(engine.value)


def test_a_killed_engine_fails_the_call_naming_the_signal(starter_bundle: Path) -> None:
    program = EngineProgram(starter_bundle, threads=1)
    n = read_manifest(starter_bundle).lora.num_params
    program.forward([1, 2], 0, np.zeros(n, np.float32))
    os.kill(program.pid, signal.SIGKILL)
    with pytest.raises(EngineGone, match=rf"pid {program.pid}\) died during a forward: "
                                         r"killed by SIGKILL"):
        program.forward([3], 2, np.zeros(n, np.float32))
    assert not program.alive
    assert program.close() == -signal.SIGKILL


def test_close_waits_for_the_engine_to_exit(starter_bundle: Path) -> None:
    program = EngineProgram(starter_bundle, threads=1)
    pid = program.pid
    assert program.close() == 0
    assert _gone(pid, 0.5) and not program.alive
    with pytest.raises(EngineGone, match="was closed"):
        program.reset()


ORPHAN = """
import sys, time
from agent.io.engine import EngineProgram
p = EngineProgram(sys.argv[1], threads=1)
assert "torch" not in sys.modules  # the service side stays light
print(p.pid, flush=True)
time.sleep(600)
"""


def test_the_engine_dies_with_its_service_and_cannot_dump_core(starter_bundle: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, str(starter_bundle)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        limits = Path(f"/proc/{pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core"))
        assert core.split()[4:6] == ["0", "0"], core
        parent.kill()  # no close(): EOF on its socket (or its parent watcher) ends the engine
        parent.wait(10)
        assert _gone(pid), f"the engine {pid} outlived its service"
    finally:
        parent.kill()
        parent.wait(10)


def test_an_engine_outlives_the_thread_that_started_it(starter_bundle: Path) -> None:
    """``POST /v1/admin/program {"resident": true}`` loads from a short-lived HTTP thread: the
    engine must serve on after that thread ends (a thread-scoped parent-death signal would
    kill it)."""
    import threading

    started: list[EngineProgram] = []
    starter = threading.Thread(target=lambda: started.append(EngineProgram(starter_bundle,
                                                                           threads=1)))
    starter.start()
    starter.join()
    program = started[0]
    try:
        time.sleep(0.3)
        n = read_manifest(starter_bundle).lora.num_params
        assert program.alive
        assert program.forward([1, 2, 3], 0, np.zeros(n, np.float32)).shape == (program.vocab_size,)
    finally:
        program.close()


def test_exit_reasons_are_named() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL (the OOM killer or kill -9)"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(3) == "exited with status 3"
    assert "still runs" in describe_exit(None)

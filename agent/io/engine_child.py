"""The inference engine process: ``python -m agent.io.engine_child --fd N --bundle DIR``.

Started by :class:`agent.io.engine.EngineProgram` (the wire is described there). It loads the
bundle's ``InferProgram`` (agent/io/runtime.py), says ready, and answers forwards until the
service closes the pipe or says ``exit``.

Hygiene, before anything heavy is imported:

- it dies with the service: an idle engine returns when its pipe reaches EOF (the service's
  end closes when the service exits, however it ends), and a watcher thread exits when the
  engine is re-parented (``--parent`` is no longer its parent), which it notices between two
  calls. Not ``PR_SET_PDEATHSIG``: that fires when the *thread* that started the engine ends,
  and ``POST /v1/admin/program {"resident": true}`` starts one from a short-lived HTTP thread;
- no core dumps: ``RLIMIT_CORE`` is inherited, the dumpable flag is reset by exec, so
  :func:`agent.io.coredump.disable_core_dumps` runs again (a dump would hold the user's text);
- Ctrl-C in a terminal reaches the whole process group: the engine ignores SIGINT and lets
  the service end it;
- its thread pool is sized before the program loads (``--threads``: the service's
  ``[inference] threads``); stdout and stderr are the service's (the journal).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.errors import BundleError
from agent.io.coredump import disable_core_dumps

log = logging.getLogger("agent.io.engine_child")

PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Exit when the parent goes: now if it has gone already, else from a watcher thread
    (it runs between calls: a call in progress holds the GIL until it returns)."""
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _reported(exc: BaseException) -> tuple[str, str, str]:
    """The wire form of an error: its kind (the parent raises the same type) and its text."""
    if isinstance(exc, BundleError | ValueError):
        kind = "BundleError" if isinstance(exc, BundleError) else "ValueError"
        return ("error", kind, str(exc))
    return ("error", "EngineError", f"{type(exc).__name__}: {exc}")


def _load(conn: Connection, bundle: Path, threads: int | None) -> Any:
    """Size the pool, load the program, and tell the parent (ready or the error); None on error."""
    t0 = time.perf_counter()
    try:
        from agent.io.runtime import InferProgram, size_thread_pool

        pool = size_thread_pool(threads)
        program = InferProgram(bundle, threads=threads)
    except Exception as exc:  # the parent refuses the bundle with this text
        log.debug("load failed", exc_info=True)
        conn.send(_reported(exc))
        return None
    conn.send(("ready", {"max_context": program.max_context, "vocab_size": program.vocab_size,
                         "load_s": time.perf_counter() - t0, "threads": pool,
                         "pid": os.getpid()}))
    return program


def serve(conn: Connection, program: Any) -> int:
    """Answer the parent's calls until it closes the pipe or says ``exit``."""
    lora: Any = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the service went away
            return 0
        op = message[0]
        if op == "exit":
            return 0
        try:
            if op == "forward":
                _, ids, start_pos, new_lora = message
                if new_lora is not None:
                    lora = new_lora
                reply: tuple[Any, ...] = ("ok", program.forward(ids, start_pos, lora))
            elif op == "reset":
                program.reset()
                reply = ("ok", None)
            else:
                reply = ("error", "EngineError", f"unknown engine call {op!r}")
        except Exception as exc:  # a bad call fails that call, not the engine
            if not isinstance(exc, ValueError):
                log.exception("engine call %s failed", op)
            reply = _reported(exc)
        try:
            conn.send(reply)
        except OSError:  # the service went away mid-call
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--fd", type=int, required=True, help="socket to the service")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the service's pid")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    disable_core_dumps()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s engine[%(process)d] %(name)s: "
                        "%(message)s")
    conn = Connection(args.fd)
    program = _load(conn, args.bundle, args.threads)
    if program is None:
        return 2
    try:
        return serve(conn, program)
    finally:
        conn.close()


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # no interpreter teardown: nothing is left to save, and unloading torch and the runtime's
    # thread pool only delays the exit the service's release is waiting for
    os._exit(code)

"""``mobizo-bench memory`` adds up the service's process tree (its front and its engine child)."""

from __future__ import annotations

import os
import subprocess
import sys

from agent.bench.memory_procs import process_tree, tree_memory


def test_a_process_tree_is_measured_front_and_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_tree(os.getpid())[0] == os.getpid()
        assert child.pid in process_tree(os.getpid())
        mem = tree_memory(os.getpid())
        assert mem["front"].pss_mb > 0 and mem["engine"].pss_mb > 0
        assert abs(mem["total"].pss_mb - mem["front"].pss_mb - mem["engine"].pss_mb) < 1e-6
    finally:
        child.kill()
        child.wait()
    alone = tree_memory(child.pid)  # a process that is gone: zeros, not an error
    assert (alone["front"].pss_mb, alone["engine"].pss_mb) == (0, 0)

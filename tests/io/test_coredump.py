"""No core dumps (issue 17): the process limits its own core size and clears its dumpable flag."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource
from agent.io.coredump import disable_core_dumps, is_dumpable
assert is_dumpable() in (True, None)
made = disable_core_dumps()
print(resource.getrlimit(resource.RLIMIT_CORE), made, is_dumpable())
"""


def test_a_process_turns_its_own_core_dumps_off() -> None:
    # in a child: the flag cannot be set back, and pytest itself should stay debuggable
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[:2] == ["(0,", "0)"]
    if sys.platform == "linux":
        assert out[2:] == ["True", "False"]


def test_children_inherit_the_core_limit() -> None:
    script = ("import subprocess, sys; from agent.io.coredump import disable_core_dumps; "
              "disable_core_dumps(); print(subprocess.run(['sh', '-c', 'ulimit -c'], "
              "capture_output=True, text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "0"

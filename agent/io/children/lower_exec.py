"""``python -m agent.io.children.lower_exec [options] -- PROGRAM ARGS...``: lower, then exec.

The thread-safe alternative to ``Popen(preexec_fn=...)`` (which can deadlock when the parent
has other threads, as the daemon does: MQTT, HTTP, watchdog). The options are the fields of a
:class:`agent.io.children.launch.LaunchPlan`; build the command with
``LaunchPlan.wrapped_argv()``. Imports nothing heavy, so it adds only interpreter start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent.io.children.launch import LaunchPlan, apply_in_child


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.io.children.lower_exec")
    parser.add_argument("--nice", type=int, required=True)
    parser.add_argument("--sched-idle", action="store_true")
    parser.add_argument("--rlimit-as", type=int, default=None, help="bytes")
    parser.add_argument("--oom-score-adj", type=int, default=1000)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("nothing to run: pass -- PROGRAM ARGS...")
    apply_in_child(LaunchPlan(
        mode="fork", argv=tuple(command), unit=None, nice=args.nice,
        sched_idle=args.sched_idle, rlimit_as_bytes=args.rlimit_as,
        oom_score_adj=args.oom_score_adj,
    ))
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"lower_exec: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())

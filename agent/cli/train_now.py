"""``mobizo-agent train-now``: ask the running daemon to train now, through its control socket.

``--ignore power,idle,hours,min-examples`` skips those constraints for this run (also
``battery`` and ``cooldown``); new data and the cooldown are always skipped. The thermal and
memory guards always apply: they protect the device.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "ask the running daemon to train now"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ignore", default="",
                        help="comma-separated constraints to skip: power, battery, idle, hours, "
                        "min-examples, cooldown (never thermal or memory)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="agent state directory (default: paths.state_dir of the config)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config file to take the state directory from")
    parser.add_argument("--wait", action="store_true",
                        help="wait until the run ends and print its outcome")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="with --wait: give up after this many seconds")


def main(args: argparse.Namespace) -> int:
    from agent.cli.status import _state_dir
    from agent.errors import MobizoError
    from agent.io.control_socket import control_request
    from agent.services.daemon.control import SOCKET_NAME, parse_ignore

    try:
        skip = parse_ignore(args.ignore)
    except ValueError as exc:
        raise MobizoError(str(exc)) from None
    sock = _state_dir(args) / SOCKET_NAME
    before = control_request(sock, "status")
    reply = control_request(sock, "train-now", {"skip": skip})
    if not reply.ok:
        raise MobizoError(f"the daemon refused: {reply.error}")
    print((reply.result or {}).get("message", "ok"))
    if not args.wait:
        return 0
    last_before = (before.result or {}).get("last_burst")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        status = control_request(sock, "status").result or {}
        last = status.get("last_burst")
        if last and last != last_before and last.get("outcome") != "stopped":
            print(json.dumps(last, indent=2))
            return 0 if last.get("outcome") in ("published", "rejected") else 1
    raise MobizoError(f"no run finished within {args.timeout:.0f} s")

"""``mobizo-agent adapters``: list, activate or roll back adapters in the registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "list, activate or roll back adapters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True,
                        help="the model bundle adapters are validated against")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state directory holding adapters/ (default: the agent's)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="every stored version and its state")
    act = sub.add_parser("activate", help="make VERSION the served adapter")
    act.add_argument("version")
    rb = sub.add_parser("rollback", help="back to the previous (or the given) version")
    rb.add_argument("version", nargs="?", default=None)


def main(args: argparse.Namespace) -> int:
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.registry import AdapterRegistry

    state_dir = args.state_dir
    if state_dir is None:
        from agent.config.paths import default_state_dir

        state_dir = default_state_dir()
    reg = AdapterRegistry.in_state_dir(Path(state_dir), validator=AdapterValidator(args.bundle))
    if args.adapters_command == "activate":
        reg.activate(args.version)
        print(f"active: {args.version}")
    elif args.adapters_command == "rollback":
        print(f"active: {reg.rollback(args.version)}")
    else:
        infos = reg.list()
        if args.json:
            print(json.dumps([i.model_dump() for i in infos], indent=2))
            return 0
        print(f"active: {reg.active() or 'initial (the bundle adapter)'}")
        for i in infos:
            m = i.manifest
            ev = json.dumps(m.eval) if m.eval else "-"
            print(f"{i.version:8} {i.state.value:9} parent={m.parent or '-':8} "
                  f"created={m.created_at[:19]} eval={ev}"
                  + (f" reason={m.rejected_reason}" if m.rejected_reason else ""))
    return 0

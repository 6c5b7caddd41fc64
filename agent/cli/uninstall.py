"""``mobizo-agent uninstall``: remove what install added; user data stays unless --purge."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

from agent.deploy.actions import report
from agent.deploy.host import read_host_facts
from agent.deploy.layout import DEFAULT_PREFIX, SERVICE_USER
from agent.deploy.uninstall import plan_uninstall

HELP = "remove what install added (keeps data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=str(DEFAULT_PREFIX),
                        help="the prefix install used; default %(default)s")
    parser.add_argument("--root", default="/", help="target system root; default /")
    parser.add_argument("--purge", action="store_true",
                        help="also delete /var/lib/mobizo-agent (interactions, adapters) and "
                        "/etc/mobizo-agent (config, credentials)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def main(args: argparse.Namespace) -> int:
    host = read_host_facts(SERVICE_USER)
    plan, layout = plan_uninstall(
        Path(args.root), host, prefix=PurePosixPath(args.prefix), purge=args.purge
    )
    report(plan, verb="uninstall", dry_run=args.dry_run,
           nothing_to_do=f"nothing to remove in {layout.root}")
    return 0

"""``mobizo-agent install``: venv, systemd units, user, directories and config into a root."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path, PurePosixPath

from agent.deploy.actions import report
from agent.deploy.host import read_host_facts
from agent.deploy.install import InstallOptions, find_source, plan_install
from agent.deploy.layout import DEFAULT_PREFIX, SERVICE_USER

HELP = "install units, users, venv and config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=str(DEFAULT_PREFIX),
                        help="install prefix on the target (venv, profiles); default %(default)s")
    parser.add_argument("--root", default="/",
                        help="target system root (an image or a test dir); default /")
    parser.add_argument("--board", default=None,
                        help="board profile (firmware_configs/NAME.toml); default: detected "
                        "(only when --root is /)")
    parser.add_argument("--no-venv", action="store_true",
                        help="do not build the virtual environment (units still run PREFIX/venv)")
    parser.add_argument("--bundle", default=None,
                        help="model bundle directory (mobizo-export output) to copy to "
                        "/var/lib/mobizo-agent/bundle, where the units look for it")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--source", default=None,
                        help="source checkout to install from; default: the one this runs from")
    parser.add_argument("--python", default=None,
                        help="interpreter that creates the venv; default: this one")
    parser.add_argument("--pip-args", default="",
                        help="extra pip arguments as one string: --pip-args='--index-url URL'")
    parser.add_argument("--notify-reload", choices=("auto", "yes", "no"), default="auto",
                        help="Type=notify-reload drop-in (systemd >= 253); auto: when the live "
                        "systemd is new enough")
    parser.add_argument("--torch-index", choices=("auto", "cpu", "pypi"), default="auto",
                        help="where torch comes from; auto: PyTorch's CPU-only index on aarch64 "
                        "(PyPI's is a CUDA build), unless --pip-args name an index; "
                        "cpu: always; pypi: never")
    parser.add_argument("--trainer-scope", action="store_true",
                        help="install the polkit rule that lets the agent run bursts as scopes "
                        "in mobizo-trainer.slice (systemd >= 257; see systemd/README.md)")


def main(args: argparse.Namespace) -> int:
    source = Path(args.source).resolve() if args.source else find_source()
    opts = InstallOptions(
        source=source,
        root=Path(args.root),
        prefix=PurePosixPath(args.prefix),
        board=args.board,
        venv=not args.no_venv,
        pip_args=tuple(shlex.split(args.pip_args)),
        notify_reload=args.notify_reload,
        torch_index=args.torch_index,
        trainer_scope=args.trainer_scope,
        bundle=Path(args.bundle) if args.bundle else None,
        **({"python": args.python} if args.python else {}),
    )
    host = read_host_facts(SERVICE_USER)
    plan, layout = plan_install(opts, host)
    report(plan, verb="install", dry_run=args.dry_run,
           nothing_to_do=f"mobizo-agent is already installed in {layout.root} "
           f"(prefix {layout.prefix}): nothing to do")
    return 0

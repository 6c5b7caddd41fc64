"""The ``mobizo-agent`` command: a thin dispatcher over one module per subcommand.

Each subcommand module under ``agent.cli`` defines::

    HELP: str                                   one line for --help
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int   exit code

Modules are imported only when their subcommand runs, so ``mobizo-agent status`` never pays
for importing torch or executorch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli.lazy import add_lazy_subcommands
from agent.errors import MobizoError

# name -> (module, one-line help). Grouped commands ("config check") use a module that
# defines its own sub-parsers.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.cli.run", "run the agent daemon (scheduler, training bursts, fleet link)"),
    "serve": ("agent.cli.serve", "run the local inference service (chat API, hot-swap)"),
    "train": ("agent.cli.train", "one-shot MobiZO fine-tuning job on a bundle and a JSONL file"),
    "eval": ("agent.cli.eval", "held-out loss of one or more adapters on a JSONL file"),
    "train-now": ("agent.cli.train_now", "ask the running daemon to train now"),
    "status": ("agent.cli.status", "print the daemon's state"),
    "config": ("agent.cli.config_cmd", "check or show the agent's config"),
    "data": ("agent.cli.data", "import, export or purge stored interactions"),
    "adapters": ("agent.cli.adapters", "list, activate or roll back adapters"),
    "detect-board": ("agent.cli.detect_board", "suggest a board profile for this machine"),
    "install": ("agent.cli.install", "install units, users, venv and config"),
    "uninstall": ("agent.cli.uninstall", "remove what install added (keeps data)"),
}


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="mobizo-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mobizo-agent {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    module = add_lazy_subcommands(parser, SUBCOMMANDS, argv)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.main(args) or 0)
    except MobizoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

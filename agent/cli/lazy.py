"""Sub-commands whose modules are imported only when chosen (shared by mobizo-agent and -bench).

A sub-command module defines ``add_arguments(parser)`` and ``main(args) -> int``; importing
it only when it runs keeps ``mobizo-agent status`` from paying for torch or executorch.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType


def add_lazy_subcommands(
    parser: argparse.ArgumentParser, table: Mapping[str, tuple[str, str]], argv: Sequence[str]
) -> ModuleType | None:
    """Add one sub-parser per ``name -> (module, help)``; import and return the chosen module."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if a in table), None)
    module = None
    for name, (module_name, help_text) in table.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                parser.error(f"`{name}` is not available in this build")
            module.add_arguments(sp)
    return module

"""``mobizo-agent detect-board``: suggest a board profile from the device tree or DMI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.config.detect import detect_board
from agent.config.profiles import default_profiles_dir

HELP = "suggest a board profile for this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="filesystem root to inspect (default /; a copy for testing)")
    parser.add_argument("--profiles-dir", type=Path, default=None,
                        help="board profiles directory (default: the installed firmware_configs)")
    parser.add_argument("--arch", default=None, help="machine architecture (default: uname -m)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    """Print the suggested profile; exit 0 if one fits, 1 if none does."""
    profiles_dir = args.profiles_dir or default_profiles_dir()
    facts, suggestion = detect_board(args.root, profiles_dir, args.arch)
    if args.json:
        print(json.dumps({
            "profile": suggestion.profile if suggestion else None,
            "evidence": suggestion.evidence if suggestion else None,
            "model": facts.model or None, "dmi": dict(facts.dmi), "arch": facts.arch,
        }, indent=2))
        return 0 if suggestion else 1
    if suggestion is None:
        print(f"no board profile in {profiles_dir} matches this machine "
              f"(model {facts.model or '-'!r}, arch {facts.arch or '-'}); "
              "use 'dev' or write one based on generic-x86_64.toml")
        return 1
    print(suggestion.profile)
    print(f"  because the {suggestion.evidence}")
    print(f'  use it with:  [device]\n                profile = "{suggestion.profile}"')
    return 0

"""``mobizo-agent config check|show``: validate a config file, or print the effective config.

``check FILE`` exits 0 for a valid file and 1 for an invalid one, listing every error as
``section.field: message (got VALUE) [FILE:LINE]``. ``show [FILE]`` prints the effective
config (defaults ← board profile ← file ← runtime overrides) with where each value came from.
The file defaults to ``$MOBIZO_CONFIG`` or ``/etc/mobizo-agent/agent.toml``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.config import LoadedConfig, default_config_path, load_config
from agent.config.problems import ConfigValidationError
from agent.config.show import render_show, show_json
from agent.errors import ConfigError

HELP = "check or show the agent's config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a config file (exit 0 = valid)")
    check.add_argument("file", nargs="?", type=Path, default=None,
                       help="config file (default: $MOBIZO_CONFIG or /etc/mobizo-agent/agent.toml)")
    show = sub.add_parser("show", help="print the effective config and where each value came from")
    show.add_argument("file", nargs="?", type=Path, default=None,
                      help="config file (default: $MOBIZO_CONFIG or /etc/mobizo-agent/agent.toml)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--overrides", type=Path, default=None,
                      help="runtime override file to apply (default: <state_dir>/overrides.json)")
    show.add_argument("--no-overrides", action="store_true", help="declared config only")
    for p in (check, show):
        p.add_argument("--profiles-dir", type=Path, default=None,
                       help="board profiles directory (default: the installed firmware_configs)")


def _resolve_file(given: Path | None) -> tuple[Path | None, str]:
    """The file to read, and a note when the default is absent (defaults-only then)."""
    if given is not None:
        return given, ""
    path = default_config_path()
    if path.exists():
        return path, ""
    return None, f"{path} does not exist: showing built-in defaults"


def main(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        return _check(args)
    return _show(args)


def _check(args: argparse.Namespace) -> int:
    path = args.file or default_config_path()
    try:
        loaded = load_config(path, profiles_dir=args.profiles_dir)
    except ConfigValidationError as exc:
        print(f"{path}: INVALID, {len(exc.problems)} error(s):")
        for problem in exc.problems:
            print(f"  {problem}")
        return 1
    except ConfigError as exc:
        print(f"{path}: INVALID: {exc}")
        return 1
    profile = f" (profile {loaded.profile.name})" if loaded.profile else ""
    print(f"{path}: OK{profile}")
    # imported here: it reads the bundle manifest (numpy via the LoRA layout), and the
    # daemon-side CLI modules must stay free of ML stacks (tests/unit/test_policy.py)
    from agent.config.quantize_check import bundle_scheme_warning

    if (warning := bundle_scheme_warning(loaded)) is not None:  # issue 8: valid, but warn
        print(f"warning: {warning}")
    return 0


def _show(args: argparse.Namespace) -> int:
    path, note = _resolve_file(args.file)
    try:
        loaded: LoadedConfig = load_config(
            path, profiles_dir=args.profiles_dir, overrides_path=args.overrides,
            replay_overrides=not args.no_overrides,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if note:
        loaded.warnings.insert(0, note)
    if args.json:
        print(json.dumps(show_json(loaded), indent=2, default=str))
    else:
        sys.stdout.write(render_show(loaded))
    return 0

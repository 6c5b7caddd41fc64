"""``mobizo-agent data``: import, export, purge and count stored interactions."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import DataError

HELP = "import, export or purge stored interactions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state directory holding interactions.sqlite3 "
                        "(default: the agent's state directory)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="add past conversations from a JSONL file")
    imp.add_argument("file", type=Path,
                     help="JSONL: {prompt|messages, response, feedback?, correction?} per line")
    exp = sub.add_parser("export", help="write every interaction to a JSONL file ('-' = stdout)")
    exp.add_argument("file", type=Path)
    purge = sub.add_parser("purge", help="delete interactions (all, or before a date)")
    purge.add_argument("--before", default=None, help="ISO date or time, e.g. 2026-01-31")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    sub.add_parser("stats", help="counts only (never content)")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    from agent.config.paths import default_state_dir

    return default_state_dir()


def _parse_date(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DataError(f"--before {text!r} is not an ISO date like 2026-01-31") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def main(args: argparse.Namespace) -> int:
    from agent.io.store import InteractionStore
    from agent.io.store_records import row_to_json

    with InteractionStore.in_state_dir(_state_dir(args)) as store:
        if args.data_command == "import":
            rows = []
            try:
                lines = Path(args.file).read_text().splitlines()
            except OSError as exc:
                raise DataError(f"cannot read {args.file}: {exc}") from exc
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{args.file} line {n} is not JSON: {exc}") from exc
            imported, skipped = store.import_rows(rows)
            print(f"imported {imported} interactions ({skipped} duplicates skipped)")
        elif args.data_command == "export":
            out = sys.stdout if str(args.file) == "-" else open(args.file, "w")  # noqa: SIM115
            n = 0
            try:
                for row in store.iter_rows():
                    out.write(json.dumps(row_to_json(row), ensure_ascii=False) + "\n")
                    n += 1
            finally:
                if out is not sys.stdout:
                    out.close()
            print(f"exported {n} interactions", file=sys.stderr)
        elif args.data_command == "purge":
            before = _parse_date(args.before) if args.before else None
            if not args.yes and sys.stdin.isatty():
                what = f"before {args.before}" if before else "ALL"
                if input(f"delete {what} stored interactions? [y/N] ").lower() != "y":
                    return 1
            print(f"purged {store.purge(before)} interactions")
        else:
            print(json.dumps(store.counts(), indent=2))
    return 0

"""``mobizo-fleet config``: publish a device's desired config overrides and wait for its report.

The document is retained and versioned (``config/desired``); the device applies it, or says
why not, on ``config/reported``. ``config reset DEVICE [FILE]`` restarts the version sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from agent.controller.client import (
    EXIT_FAILED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_USAGE,
    BrokerOptions,
    FleetClient,
)
from agent.core.fleet_documents import MAX_CONFIG_VERSION


def _read_overrides(file: str | None) -> dict[str, Any] | None:
    if file is None:
        return {}
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}; give a JSON or .toml file", file=sys.stderr)
        return None
    if not isinstance(doc, dict):
        print(f"{path}: the overrides must be an object (a table)", file=sys.stderr)
        return None
    return doc


def run_config(args: argparse.Namespace, opts: BrokerOptions) -> int:
    """``mobizo-fleet config``: publish desired overrides, wait for the device's report."""
    # `config reset DEVICE [FILE]`: a document marked "reset" is taken whatever version the
    # device has applied, and its version (default 0) starts the sequence again.
    reset = args.device == "reset"
    if reset:
        if args.file is None:
            print("usage: mobizo-fleet config reset DEVICE [FILE]", file=sys.stderr)
            return EXIT_USAGE
        args.device, args.file = args.file, args.extra
    elif args.file is None or args.extra is not None:
        print("usage: mobizo-fleet config DEVICE FILE", file=sys.stderr)
        return EXIT_USAGE
    doc = _read_overrides(args.file)
    if doc is None:
        return EXIT_USAGE
    with FleetClient(opts) as fc:
        dev = fc.topics.device(args.device)
        version = args.version
        if version is None and reset:
            version = 0
            fc.subscribe(dev.config_reported)
        elif version is None:
            # Next version after whatever the broker holds (desired or reported).
            fc.subscribe(dev.config_desired, dev.config_reported)
            seen = 0
            for msg in fc.messages_within(args.wait):
                try:
                    body = json.loads(msg.payload or b"{}")
                except ValueError:
                    continue
                for key in ("version", "rejected_version"):
                    # A version the device refuses (>= 2**53) never counts: reset instead.
                    if isinstance(body.get(key), int) and body[key] < MAX_CONFIG_VERSION:
                        seen = max(seen, body[key])
            version = seen + 1
        else:
            fc.subscribe(dev.config_reported)
        desired: dict[str, Any] = {"version": version, "config": doc}
        if reset:
            desired["reset"] = True
        fc.publish(dev.config_desired, json.dumps(desired).encode(), retain=True)
        if args.no_wait:
            print(json.dumps({"version": version, "published": True}))
            return EXIT_OK
        for msg in fc.messages_within(args.timeout):
            if msg.topic != dev.config_reported or not msg.payload:
                continue
            body = json.loads(msg.payload)
            if body.get("version") == version and body.get("status") == "applied":
                print(json.dumps(body, indent=2))
                return EXIT_OK
            if body.get("rejected_version") == version:
                print(json.dumps(body, indent=2))
                return EXIT_FAILED
    print(
        f"error: {args.device} did not report config v{version} within {args.timeout:.0f} s "
        "(it stays retained and applies when the device connects)",
        file=sys.stderr,
    )
    return EXIT_NO_ANSWER

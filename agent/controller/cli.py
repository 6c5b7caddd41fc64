"""``mobizo-fleet``: the fleet controller's command line.

::

    mobizo-fleet --host H --port P --fleet F devices
    mobizo-fleet ... status DEVICE
    mobizo-fleet ... cmd DEVICE NAME [k=v ... | JSON]     exit 0 ok, 1 failed, 3 no answer
    mobizo-fleet ... config DEVICE FILE                   desired overrides (JSON or TOML)
    mobizo-fleet ... config reset DEVICE [FILE]           restart the version sequence
    mobizo-fleet ... watch [--count N] [--duration S]     live table; Ctrl-C ends it

It talks to the same broker settings as the agent (TLS and credentials included).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.controller.client import BrokerOptions, DeviceView, FleetClient, FleetError
from agent.core.commands import COMMANDS
from agent.core.fleet_documents import MAX_CONFIG_VERSION
from agent.errors import MobizoError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
_TERMINAL_OK = {"SUCCEEDED"}


def _parse_args_list(items: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pairs (values parsed as JSON when they are JSON) or one JSON object."""
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            doc = json.loads(items[0])
        except ValueError as exc:
            raise MobizoError(f"ARGS is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise MobizoError("ARGS JSON must be an object")
        return doc
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MobizoError(f"argument {item!r} is not k=v (or give one JSON object)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _options(args: argparse.Namespace) -> BrokerOptions:
    password = None
    if args.password_file:
        password = MqttConfig(password_file=args.password_file).read_password()
    return BrokerOptions(
        host=args.host,
        port=args.port,
        fleet=args.fleet,
        protocol=args.protocol,
        username=args.username,
        password=password,
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        tls=args.tls or bool(args.tls_ca),
        tls_insecure=args.tls_insecure,
    )


def _row(view: DeviceView) -> list[str]:
    st = view.state
    burst = st.last_burst if st else None
    burst_text = "-"
    if burst is not None:
        loss = f"{burst.loss:.3f}" if burst.loss is not None else "?"
        burst_text = f"{burst.outcome or '?'} {burst.steps} steps loss {loss}"
    return [
        view.device_id,
        "online" if view.online else (view.available.status if view.available else "unknown"),
        f"{st.state}" if st else "-",
        str(st.adapter.version) if st and st.adapter.version is not None else "-",
        burst_text,
    ]


def _table(views: dict[str, DeviceView]) -> str:
    head = ["DEVICE", "AVAILABLE", "STATE", "ADAPTER", "LAST BURST"]
    rows = [head] + [_row(views[k]) for k in sorted(views)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _view_json(view: DeviceView) -> dict[str, Any]:
    return {
        "device_id": view.device_id,
        "online": view.online,
        "available": view.available.model_dump(mode="json") if view.available else None,
        "state": view.state.model_dump(mode="json") if view.state else None,
        "reported": view.reported,
    }


def cmd_devices(args: argparse.Namespace) -> int:
    with FleetClient(_options(args)) as fc:
        views = fc.snapshot(args.wait)
    if args.json:
        print(json.dumps([_view_json(views[k]) for k in sorted(views)], indent=2))
    else:
        print(_table(views) if views else f"no devices seen in fleet {args.fleet!r}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with FleetClient(_options(args)) as fc:
        views = fc.snapshot(args.wait, device=args.device)
    view = views.get(args.device)
    if view is None:
        print(
            f"device {args.device!r} has published nothing in fleet {args.fleet!r}", file=sys.stderr
        )
        return EXIT_FAILED
    print(json.dumps(_view_json(view), indent=2))
    return EXIT_OK


def cmd_cmd(args: argparse.Namespace) -> int:
    if args.name not in COMMANDS and not args.force:
        print(
            f"unknown command {args.name!r}; known: {', '.join(sorted(COMMANDS))} "
            "(--force sends it anyway)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    payload = _parse_args_list(args.args)
    with FleetClient(_options(args)) as fc:
        try:
            result = fc.request(
                args.device,
                args.name,
                payload,
                timeout=args.timeout,
                request_id=args.request_id,
                job_id=args.job_id,
                expires_in=args.expires_in,
            )
        except FleetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_NO_ANSWER
        out: dict[str, Any] = result.model_dump(mode="json")
        code = EXIT_OK if result.ok else EXIT_FAILED
        if result.ok and result.job is not None and not args.no_wait:
            if result.job.status in ("QUEUED", "IN_PROGRESS"):
                try:
                    out["job"] = fc.wait_job(args.device, result.job.job_id, timeout=args.timeout)
                except FleetError as exc:
                    print(json.dumps(out, indent=2))
                    print(f"error: {exc}", file=sys.stderr)
                    return EXIT_NO_ANSWER
            else:
                out["job"] = result.job.model_dump(mode="json")
            code = EXIT_OK if out["job"]["status"] in _TERMINAL_OK else EXIT_FAILED
    print(json.dumps(out, indent=2))
    return code


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


def cmd_config(args: argparse.Namespace) -> int:
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
    with FleetClient(_options(args)) as fc:
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


def cmd_watch(args: argparse.Namespace) -> int:
    views: dict[str, DeviceView] = {}
    updates = 0
    with FleetClient(_options(args)) as fc:
        fc.subscribe(fc.topics.all_available, fc.topics.all_state, fc.topics.all_telemetry)
        end = time.monotonic() + args.duration if args.duration else None
        try:
            while args.count is None or updates < args.count:
                left = 0.5 if end is None else min(0.5, end - time.monotonic())
                if left <= 0:
                    break
                try:
                    msg = fc.messages.get(timeout=left)
                except queue.Empty:
                    continue
                if fc.absorb(views, msg) is None:
                    continue
                updates += 1
                if sys.stdout.isatty():
                    print("\x1b[2J\x1b[H", end="")
                print(_table(views))
                print(f"-- {time.strftime('%H:%M:%S')} update {updates}", flush=True)
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way out
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobizo-fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="broker host")
    parser.add_argument("--port", type=int, default=1883, help="broker port")
    parser.add_argument("--fleet", default="default", help="fleet name")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--username")
    parser.add_argument("--password-file", help="file whose first line is the password")
    parser.add_argument("--tls", action="store_true", help="TLS with the system CAs")
    parser.add_argument("--tls-ca", type=Path, help="CA file (implies --tls)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate")
    parser.add_argument("--tls-key", type=Path, help="client key")
    parser.add_argument("--tls-insecure", action="store_true", help="skip host name check")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("devices", help="list devices from retained state")
    p.add_argument("--wait", type=float, default=1.0, help="seconds to collect retained messages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("status", help="one device's state, availability and reported config")
    p.add_argument("device")
    p.add_argument("--wait", type=float, default=1.0)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cmd", help="send a command and wait for its result")
    p.add_argument("device")
    p.add_argument("name", help=", ".join(sorted(COMMANDS)))
    p.add_argument("args", nargs="*", help="k=v pairs or one JSON object")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--request-id")
    p.add_argument("--job-id", help="idempotency key for long commands")
    p.add_argument(
        "--expires-in", type=float, help="seconds after which the device must not run it"
    )
    p.add_argument("--no-wait", action="store_true", help="do not follow a job to its end")
    p.add_argument("--force", action="store_true", help="send even an unknown command name")
    p.set_defaults(func=cmd_cmd)

    p = sub.add_parser(
        "config",
        help="publish desired config overrides (retained, versioned); `config reset DEVICE "
        "[FILE]` restarts the device's version sequence (from --version, default 0)",
    )
    p.add_argument("device", help="the device, or `reset`")
    p.add_argument("file", nargs="?", help="JSON or .toml file with the overrides")
    p.add_argument("extra", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--version", type=int, help="default: one more than the broker holds")
    p.add_argument("--wait", type=float, default=0.5, help="seconds to read the current version")
    p.add_argument("--timeout", type=float, default=15.0, help="wait this long for the report")
    p.add_argument("--no-wait", action="store_true")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("watch", help="live table of the fleet")
    p.add_argument("--count", type=int, help="stop after this many updates")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MobizoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(exc, FleetError) else EXIT_NO_ANSWER
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``mobizo-fleet``: the fleet controller's command line.

::

    mobizo-fleet --host H --port P --fleet F devices
    mobizo-fleet ... status DEVICE
    mobizo-fleet ... cmd DEVICE NAME [k=v ... | JSON]     exit 0 ok, 1 failed, 3 no answer
    mobizo-fleet ... cmd (dev1,dev2,... | --all) NAME ...  one row per device; 1 if any failed
    mobizo-fleet ... cancel (DEVICE,... | --all) JOB_ID [--remove]
    mobizo-fleet ... config DEVICE FILE                   desired overrides (JSON or TOML)
    mobizo-fleet ... config reset DEVICE [FILE]           restart the version sequence
    mobizo-fleet ... watch [--count N] [--duration S]     live table; Ctrl-C ends it

A finished job is acknowledged (``ack-jobs``) once its outcome is printed, so the device
clears its retained ``jobs/<id>`` message (``--keep-job`` leaves it).

It talks to the same broker settings as the agent (TLS and credentials included).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.controller import fanout
from agent.controller.client import (
    EXIT_FAILED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_USAGE,
    TERMINAL_JOB_STATES,
    BrokerOptions,
    DeviceView,
    FleetClient,
    FleetError,
)
from agent.controller.desired import run_config
from agent.controller.push import add_push_parsers
from agent.controller.watch import WatchLimits, watch
from agent.core.commands import COMMANDS
from agent.core.fleet_documents import FederatedInfo
from agent.core.topics import valid_segment
from agent.errors import MobizoError

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
        _federated_text(st.federated if st else None),
    ]


def _federated_text(fed: FederatedInfo | None) -> str:
    """The last federated round: ``r4 trained: serving v7``, ``r5 declined: power: ...``."""
    if fed is None:
        return "-"
    detail = fed.reason or fed.served
    return f"r{fed.round} {fed.status}" + (f": {detail[:60]}" if detail else "")


def _table(views: dict[str, DeviceView]) -> str:
    head = ["DEVICE", "AVAILABLE", "STATE", "ADAPTER", "LAST BURST", "FEDERATED"]
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


def _targets(fc: FleetClient, args: argparse.Namespace) -> tuple[list[str], dict[str, DeviceView]]:
    """The devices a fleet-wide command goes to: ``--all`` (every device with retained
    availability or state) or the comma-separated list."""
    if args.all:
        views = fc.snapshot(args.wait)
        return sorted(views), views
    devices = [d for d in args.device.split(",") if d]
    for device in devices:
        if not valid_segment(device) or device.startswith("_"):
            raise MobizoError(f"{device!r} is not a device id: use 1-64 of A-Z a-z 0-9 _ . - "
                              "(not starting with _), comma-separated")
    return devices, {}


def _fleet_wide(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> int:
    with FleetClient(_options(args)) as fc:
        devices, views = _targets(fc, args)
        if not devices:
            print(f"no devices seen in fleet {args.fleet!r}; nothing sent", file=sys.stderr)
            return EXIT_FAILED
        outcomes = fanout.run_on_devices(
            fc, devices, name, payload, timeout=args.timeout, job_id=args.job_id,
            expires_in=args.expires_in, follow=not args.no_wait, ack=not args.keep_job)
    for out in outcomes:
        seen = views.get(out.device)
        if out.status == fanout.NO_ANSWER and seen is not None and not seen.online:
            out.detail += f"; its link is {seen.available.status if seen.available else '?'}"
    if args.json:
        print(json.dumps(fanout.as_json(outcomes), indent=2))
    else:
        print(fanout.table(outcomes))
    if all(o.ok for o in outcomes):
        return EXIT_OK
    silent = all(o.status == fanout.NO_ANSWER for o in outcomes if not o.ok)
    return EXIT_NO_ANSWER if silent else EXIT_FAILED


def _shift_all(args: argparse.Namespace, second: str) -> bool:
    """With ``--all`` the first positional is not a device: move the positionals left."""
    if not args.all:
        return True
    if getattr(args, second) is None and args.device is None:
        return False
    rest = getattr(args, "args", None)
    if rest is not None:
        args.args = ([getattr(args, second)] if getattr(args, second) is not None else []) + rest
    setattr(args, second, args.device)
    return True


def cmd_cancel(args: argparse.Namespace) -> int:
    if not _shift_all(args, "job_id_arg") or args.job_id_arg is None:
        print("usage: mobizo-fleet cancel (DEVICE[,DEVICE...] | --all) JOB_ID", file=sys.stderr)
        return EXIT_USAGE
    args.job_id, args.expires_in = None, None
    return _fleet_wide(args, "cancel", {"job_id": args.job_id_arg, "remove": args.remove})


def _ack(fc: FleetClient, device: str, job_id: str) -> None:
    # Best effort: an unacknowledged job only keeps its retained message a while longer.
    try:
        fc.request(device, "ack-jobs", {"job_ids": [job_id]}, timeout=5.0)
    except FleetError as exc:
        print(f"warning: job {job_id} not acknowledged ({exc}); its retained message stays",
              file=sys.stderr)


def cmd_cmd(args: argparse.Namespace) -> int:
    if not _shift_all(args, "name") or args.name is None:
        print("usage: mobizo-fleet cmd (DEVICE[,DEVICE...] | --all) NAME [ARGS]",
              file=sys.stderr)
        return EXIT_USAGE
    if args.name not in COMMANDS and not args.force:
        print(
            f"unknown command {args.name!r}; known: {', '.join(sorted(COMMANDS))} "
            "(--force sends it anyway)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    payload = _parse_args_list(args.args)
    if args.all or "," in args.device:
        return _fleet_wide(args, args.name, payload)
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
            if not args.keep_job and out["job"]["status"] in TERMINAL_JOB_STATES:
                _ack(fc, args.device, out["job"]["job_id"])
    print(json.dumps(out, indent=2))
    return code


def cmd_config(args: argparse.Namespace) -> int:
    return run_config(args, _options(args))


def cmd_watch(args: argparse.Namespace) -> int:
    limits = WatchLimits(count=args.count, duration=args.duration, interval=args.interval)
    with FleetClient(_options(args)) as fc:
        watch(fc, sys.stdout, tty=sys.stdout.isatty(), limits=limits)
    return EXIT_OK


def _fleet_wide_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help="every device with retained availability or state in the fleet")
    p.add_argument("--wait", type=float, default=1.0,
                   help="with --all: seconds to collect the retained messages")
    p.add_argument("--json", action="store_true", help="fleet-wide results as JSON")
    p.add_argument("--keep-job", action="store_true",
                   help="do not acknowledge finished jobs (their retained messages stay)")


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

    p = sub.add_parser("cmd", help="send a command and wait for its result (one device, a "
                       "comma-separated list, or --all)")
    p.add_argument("device", nargs="?", help="DEVICE or dev1,dev2,... (omit with --all)")
    p.add_argument("name", nargs="?", help=", ".join(sorted(COMMANDS)))
    p.add_argument("args", nargs="*", help="k=v pairs or one JSON object")
    _fleet_wide_options(p)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--request-id")
    p.add_argument("--job-id", help="idempotency key for long commands")
    p.add_argument(
        "--expires-in", type=float, help="seconds after which the device must not run it"
    )
    p.add_argument("--no-wait", action="store_true", help="do not follow a job to its end")
    p.add_argument("--force", action="store_true", help="send even an unknown command name")
    p.set_defaults(func=cmd_cmd)

    p = sub.add_parser("cancel", help="cancel a queued or running job (CANCELED; --remove: "
                       "REMOVED and its retained message cleared at once)")
    p.add_argument("device", nargs="?", help="DEVICE or dev1,dev2,... (omit with --all)")
    p.add_argument("job_id_arg", nargs="?", metavar="JOB_ID")
    _fleet_wide_options(p)
    p.add_argument("--remove", action="store_true", help="REMOVED instead of CANCELED")
    p.add_argument("--timeout", type=float, default=30.0, help="for the reply, then the end")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a running job to stop")
    p.set_defaults(func=cmd_cancel)

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
    p.add_argument("--interval", type=float, default=0.5,
                   help="redraw a terminal at most this often (seconds)")
    p.set_defaults(func=cmd_watch)

    add_push_parsers(sub, _options)  # push-adapter, push-bundle (controller/push.py)
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

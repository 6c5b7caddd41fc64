"""``mobizo-agent serve``: the local inference service (chat API, interaction capture, hot-swap)."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.services.inference.settings import ServeConfig

HELP = "run the local inference service (chat API, hot-swap)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every setting has its default in the config model (agent.config: [service], [inference],
    # [paths]); a flag given here overrides that one field.
    parser.add_argument("--config", type=Path, default=None,
                        help="agent.toml, the daemon's file: [service] inference_url says where "
                        "to listen, [inference] sets threads, context, tokens, queue and store")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle directory (default: the config's bundle_dir)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="holds interactions.sqlite3 and adapters/ (default: paths.state_dir)")
    parser.add_argument("--listen", default=None,
                        help="HOST:PORT to listen on ('' for none; default from "
                        "service.inference_url); off loopback only with the token required")
    parser.add_argument("--unix", type=Path, default=None,
                        help="also listen on this socket (mode 0660: its group needs no token)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="the API token TCP clients send as 'Authorization: Bearer' "
                        "(default: [inference] token_file, else <state dir>/inference.token; "
                        "made with mode 0600 if missing)")
    parser.add_argument("--threads", type=int, default=None, help="runtime CPU threads")
    parser.add_argument("--max-queue", type=int, default=None, help="waiting requests before 503")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="default max generated tokens per request")
    parser.add_argument("--no-capture", action="store_true", help="do not store interactions")
    parser.add_argument("--store-max-mb", type=float, default=None, help="store size cap (MiB)")
    parser.add_argument("--retention-days", type=float, default=None, help="store retention")
    parser.add_argument("--watch-interval", type=float, default=None,
                        help="seconds between checks of the active-adapter pointer")
    parser.add_argument("--post-switch-command", default=None,
                        help="command run after each adapter switch, with MOBIZO_ADAPTER_VERSION,"
                        " MOBIZO_ADAPTER_PATH and MOBIZO_BUNDLE_ID in its environment")
    parser.add_argument("--post-switch-url", default=None,
                        help="URL POSTed {version, path, bundle_id, lora_name, lora_path} after "
                        "each switch (e.g. vLLM's /v1/load_lora_adapter)")


def settings_from_args(args: argparse.Namespace) -> tuple[Path, Path, ServeConfig]:
    """(bundle dir, state dir, service settings): the config file's, with the flags on top."""
    from agent.config import AgentConfig, load_config
    from agent.services.inference.settings import serve_config

    cfg = (load_config(args.config, replay_overrides=True).config if args.config is not None
           else AgentConfig())
    inf = cfg.inference
    store = None
    if args.no_capture or args.store_max_mb is not None or args.retention_days is not None:
        from agent.io.store import StoreConfig

        mb = inf.store_max_mb if args.store_max_mb is None else args.store_max_mb
        store = StoreConfig(
            capture=inf.capture and not args.no_capture, max_total_bytes=int(mb * 1024 * 1024),
            retention_days=args.retention_days or inf.retention_days)
    from pydantic import ValidationError

    from agent.errors import ConfigError

    try:  # --listen '' = no TCP listener
        config = serve_config(
            cfg, listen=args.listen, unix_socket=args.unix, threads=args.threads,
            max_queue=args.max_queue, default_max_tokens=args.max_tokens,
            watch_interval_s=args.watch_interval, post_switch_url=args.post_switch_url,
            token_file=args.token_file, post_switch_command=shlex.split(
                args.post_switch_command) if args.post_switch_command else None, store=store)
    except ValidationError as exc:
        raise ConfigError("; ".join(str(e["msg"]).removeprefix("Value error, ")
                                    for e in exc.errors())) from exc
    return (args.bundle or cfg.bundle_dir, args.state_dir or cfg.paths.state_dir, config)


def main(args: argparse.Namespace) -> int:
    from agent.io.coredump import disable_core_dumps
    from agent.io.systemd import Notifier, WatchdogPinger, watchdog_interval
    from agent.services.inference.service import InferenceService

    disable_core_dumps()  # prompts and replies are in memory: never dump them
    bundle, state_dir, config = settings_from_args(args)
    service = InferenceService(bundle, state_dir, config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    address = service.address
    # one line on stdout that scripts and tests wait for
    print(f"serving on {address[0]}:{address[1]}" if address else
          f"serving on unix:{config.unix_socket}", flush=True)
    # Type=notify: the Notifier speaks the raw socket protocol when systemd-python is
    # missing (install does not build it on boards), and is a no-op outside systemd.
    notifier = Notifier()
    notifier.ready(f"serving adapter {service.health()['adapter']['version']}")
    # WatchdogSec=: ping only while the service's threads live (a dead generation or
    # accept thread stops the pings, and systemd restarts the unit)
    pinger = WatchdogPinger(notifier, watchdog_interval())
    while not stop.wait(min((pinger.interval or 10.0) / 2, 5.0)):
        if service.alive():
            pinger.tick()
    notifier.stopping()
    service.stop()
    notifier.close()
    return 0

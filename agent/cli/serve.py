"""``mobizo-agent serve``: the local inference service (chat API, interaction capture, hot-swap)."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading
from pathlib import Path

HELP = "run the local inference service (chat API, hot-swap)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="holds interactions.sqlite3 and adapters/")
    parser.add_argument("--listen", default="127.0.0.1:8780",
                        help="HOST:PORT to listen on ('' for none); keep it on loopback")
    parser.add_argument("--unix", type=Path, default=None, help="also listen on this socket")
    parser.add_argument("--threads", type=int, default=None, help="runtime CPU threads")
    parser.add_argument("--max-queue", type=int, default=16, help="waiting requests before 503")
    parser.add_argument("--max-tokens", type=int, default=128,
                        help="default max generated tokens per request")
    parser.add_argument("--no-capture", action="store_true", help="do not store interactions")
    parser.add_argument("--store-max-mb", type=float, default=256, help="store size cap (MiB)")
    parser.add_argument("--retention-days", type=float, default=90, help="store retention")
    parser.add_argument("--watch-interval", type=float, default=0.25,
                        help="seconds between checks of the active-adapter pointer")
    parser.add_argument("--post-switch-command", default=None,
                        help="command run after each adapter switch, with MOBIZO_ADAPTER_VERSION,"
                        " MOBIZO_ADAPTER_PATH and MOBIZO_BUNDLE_ID in its environment")
    parser.add_argument("--post-switch-url", default=None,
                        help="URL POSTed {version, path, bundle_id, lora_name, lora_path} after "
                        "each switch (e.g. vLLM's /v1/load_lora_adapter)")


def main(args: argparse.Namespace) -> int:
    from agent.io.store import StoreConfig
    from agent.io.systemd import Notifier
    from agent.services.inference.service import InferenceService, ServeConfig

    config = ServeConfig(
        listen=args.listen or None, unix_socket=args.unix, threads=args.threads,
        max_queue=args.max_queue, default_max_tokens=args.max_tokens,
        watch_interval_s=args.watch_interval,
        post_switch_command=shlex.split(args.post_switch_command)
        if args.post_switch_command else None,
        post_switch_url=args.post_switch_url,
        store=StoreConfig(capture=not args.no_capture,
                          max_total_bytes=int(args.store_max_mb * 1024 * 1024),
                          retention_days=args.retention_days),
    )
    service = InferenceService(args.bundle, args.state_dir, config)
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
    stop.wait()
    notifier.stopping()
    service.stop()
    notifier.close()
    return 0

"""``mobizo-agent run``: the agent daemon (scheduler, training bursts, eval gate, fleet link).

Exit codes: 0 clean stop (SIGTERM/SIGINT), 2 bad config / missing bundle or registry (every
problem printed with its field path), 1 an unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

HELP = "run the agent daemon (scheduler, training bursts, fleet link)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="agent.toml (default: $MOBIZO_CONFIG, else "
                        "/etc/mobizo-agent/agent.toml if it exists, else built-in defaults)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state directory (overrides [paths].state_dir)")
    parser.add_argument("--profiles-dir", type=Path, default=None,
                        help="board profiles directory (default: the packaged firmware_configs)")
    parser.add_argument("--tick-seconds", type=float, default=2.0,
                        help="seconds between main-loop ticks (default 2)")
    # These override [daemon] in the config (tests pass short ones); unset: the config's.
    parser.add_argument("--stop-grace-seconds", type=float, default=None,
                        help="overrides [daemon].stop_grace_s: how long a stopped burst may "
                        "take to checkpoint before SIGKILL")
    parser.add_argument("--publish-verify-seconds", type=float, default=None,
                        help="overrides [daemon].publish_verify_s: how long the inference "
                        "service has to serve a new adapter")
    parser.add_argument("--failure-backoff-seconds", type=float, default=None,
                        help="overrides [daemon].failure_backoff_s: wait after a failed burst "
                        "(doubles per failure, up to [daemon].failure_backoff_max_s)")
    parser.add_argument("--debug-hooks", action="store_true",
                        help="accept debug commands on the control socket (tests only)")


def main(args: argparse.Namespace) -> int:
    from agent.app import App, AppOptions
    from agent.config import default_config_path
    from agent.io.coredump import disable_core_dumps

    # The daemon reads the user's text: never dump it (LimitCORE=0 too; the trainer and the
    # evaluator inherit the limit). It stays ptrace-readable by its own user, so tools and
    # tests can still check what it maps (/proc/PID/maps).
    disable_core_dumps(dumpable=True)
    path = args.config
    if path is None:
        candidate = default_config_path()
        path = candidate if candidate.exists() else None
    forced = {"stop_grace_s": args.stop_grace_seconds,
              "publish_verify_s": args.publish_verify_seconds,
              "failure_backoff_s": args.failure_backoff_seconds}
    app = App(AppOptions(config_path=path, state_dir=args.state_dir, tick_s=args.tick_seconds,
                         daemon_settings={k: v for k, v in forced.items() if v is not None},
                         debug_hooks=args.debug_hooks, profiles_dir=args.profiles_dir))
    # Errors here (invalid config, no bundle, broken registry) propagate as MobizoError: the
    # dispatcher prints them and exits 2, before READY, so systemd sees a failed start.
    app.load()
    daemon = app.build()
    signal.signal(signal.SIGTERM, lambda *_: app.request_stop())
    signal.signal(signal.SIGINT, lambda *_: app.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    code = app.run()
    sys.stdout.flush()
    return code

"""``mobizo-agent status``: print the daemon's state from ``<state_dir>/status.json``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

from agent.core.status import AgentStatus
from agent.errors import ConfigError
from agent.io.status_file import StatusFileError, read_status, status_path

HELP = "print the daemon's state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="agent state directory (default: paths.state_dir of the config)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config file to take the state directory from "
                        "(default: $MOBIZO_CONFIG or /etc/mobizo-agent/agent.toml)")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    from agent.config import default_config_path, load_config

    path = args.config or default_config_path()
    if args.config is None and not path.exists():
        path = None
    try:
        return load_config(path).config.paths.state_dir
    except ConfigError as exc:
        raise ConfigError(f"cannot find the state directory: {exc}; pass --state-dir") from exc


def _pid_alive(pid: int | None) -> bool | None:
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, just not ours
        return True
    return True


def _when(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    ago = max(0.0, now - ts)
    span = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else (
        f"{ago / 3600:.1f} h")
    return f"{dt.datetime.fromtimestamp(ts):%Y-%m-%d %H:%M:%S} ({span} ago)"


def render(status: AgentStatus, now: float, alive: bool | None) -> str:
    """The human form of a status document."""
    lines = [f"state:    {status.headline()}"]
    lines.append(f"since:    {_when(status.since, now)}")
    if status.blocked_by:
        lines.append(f"blocked:  {', '.join(status.blocked_by)}")
    if status.active_adapter:
        lines.append(f"adapter:  {status.active_adapter}")
    if status.pid:
        state = {True: "running", False: "NOT RUNNING (stale status)", None: "unknown"}[alive]
        lines.append(f"daemon:   pid {status.pid} {state}, updated {_when(status.updated_at, now)}")
    burst = status.last_burst
    if burst is not None:
        lines.append(f"last burst: {burst.outcome}, {burst.steps} steps, ended "
                     f"{_when(burst.ended_at, now)}")
        if burst.reason:
            lines.append(f"  reason:  {burst.reason}")
        if burst.train_loss_start is not None and burst.train_loss_end is not None:
            lines.append(
                f"  train loss: {burst.train_loss_start:.4g} -> {burst.train_loss_end:.4g}"
            )
        if burst.heldout_loss_candidate is not None:
            active = burst.heldout_loss_active
            lines.append(f"  held-out loss: candidate {burst.heldout_loss_candidate:.4g}"
                         + (f" vs active {active:.4g}" if active is not None else ""))
        if burst.adapter_version:
            lines.append(f"  adapter: {burst.adapter_version}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Exit 0 with the status, 1 when there is no status file (the agent is not running)."""
    state_dir = _state_dir(args)
    try:
        status = read_status(state_dir)
    except StatusFileError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "path": str(status_path(state_dir))}))
        else:
            print(f"mobizo-agent: {exc}")
        return 1
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(render(status, time.time(), _pid_alive(status.pid)))
    return 0

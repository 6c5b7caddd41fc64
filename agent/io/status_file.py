"""The status file ``<state_dir>/status.json``: written by the daemon, read by the CLI.

The document is :class:`agent.core.status.AgentStatus`; it is written atomically on every
change, so a reader never sees half of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from agent.core.status import STATUS_FILE, AgentStatus
from agent.errors import MobizoError
from agent.io.atomic import atomic_write_text


class StatusFileError(MobizoError):
    """The status file is missing or unreadable."""


def status_path(state_dir: Path) -> Path:
    """``<state_dir>/status.json``."""
    return Path(state_dir) / STATUS_FILE


def write_status(state_dir: Path, status: AgentStatus) -> Path:
    """Write ``status`` to ``<state_dir>/status.json`` atomically (temp, fsync, rename)."""
    path = status_path(state_dir)
    atomic_write_text(path, status.model_dump_json(indent=2) + "\n")
    return path


def read_status(state_dir: Path) -> AgentStatus:
    """Read ``<state_dir>/status.json``.

    Raises:
        StatusFileError: missing (daemon never ran here) or unreadable.
    """
    path = status_path(state_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StatusFileError(
            f"no status file at {path}: the agent is not running with this state directory "
            "(start it with `mobizo-agent run` or `systemctl start mobizo-agent`, or pass "
            "--state-dir)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StatusFileError(f"status file {path} is unreadable ({exc})") from exc
    try:
        return AgentStatus.model_validate(raw)
    except ValidationError as exc:
        raise StatusFileError(
            f"status file {path} has an unexpected format ({exc.error_count()} errors); is the "
            "daemon a different version?"
        ) from exc


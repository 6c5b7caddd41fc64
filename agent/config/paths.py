"""[paths] section: where the agent keeps its state."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from agent.config.base import Section

SYSTEM_STATE_DIR = Path("/var/lib/mobizo-agent")
STATUS_FILE = "status.json"
OVERRIDES_FILE = "overrides.json"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The state directory when the config names none.

    systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``) first, then the system directory
    when it is usable (root, or it exists and is writable), else the user's XDG state
    directory, so an empty config works on a developer machine without root.
    """
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0 or (SYSTEM_STATE_DIR.is_dir() and os.access(SYSTEM_STATE_DIR, os.W_OK)):
        return SYSTEM_STATE_DIR
    xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/state")
    return Path(xdg) / "mobizo-agent"


class PathsConfig(Section):
    """State directory; the status file, overrides, store and registry default to it."""

    state_dir: Path = Field(
        default_factory=default_state_dir, strict=False,
        description="agent state (status, overrides, checkpoints, store, adapters); default "
        "$STATE_DIRECTORY, else /var/lib/mobizo-agent, else ~/.local/state/mobizo-agent",
    )

    @property
    def status_file(self) -> Path:
        return self.state_dir / STATUS_FILE

    @property
    def overrides_file(self) -> Path:
        return self.state_dir / OVERRIDES_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "checkpoints"

"""What install needs from a board profile: its name and the memory caps for the units.

The profile itself stays in firmware_configs/ (agent.config owns its schema and loading); the
generated agent.toml only names it, so the loader merges it at run time.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from agent.config.loader import validate
from agent.config.profiles import list_profiles, load_profile
from agent.errors import ConfigError

# What the daemon itself needs besides the trainer (Python, pydantic, paho, SQLite, the
# registry), with room to spare; measured RSS of an idle daemon is well below this.
DAEMON_BASE_MB = 512


@dataclass(frozen=True)
class BoardCaps:
    """Resource caps one board profile asks for (MiB; 0 = no cap).

    Attributes:
        profile: the profile's name.
        trainer_memory_mb: training.memory_max_mb (the burst's cap).
        inference_memory_mb: inference.memory_max_mb (the service's cap).
        trainer_nice: training.nice.
    """

    profile: str
    trainer_memory_mb: int
    inference_memory_mb: int
    trainer_nice: int

    @property
    def agent_memory_mb(self) -> int:
        """MemoryMax of mobizo-agent.service: the daemon plus a forked burst (0 = no cap).

        In fork mode the burst shares the daemon's cgroup (see trainer_launch), so the
        service's cap must hold both; the burst's own cap is its RLIMIT_AS.
        """
        return 0 if self.trainer_memory_mb == 0 else DAEMON_BASE_MB + self.trainer_memory_mb


def board_caps(name: str, profiles_dir: Path) -> BoardCaps:
    """Load profile ``name``, validate it against the full config schema, and read its caps.

    Raises:
        ConfigError: unknown profile, or it does not validate.
    """
    profile = load_profile(name, profiles_dir)
    config = validate(profile.values, origin=f"board profile {name} ({profile.path})")
    return BoardCaps(
        profile=name,
        trainer_memory_mb=int(config.training.memory_max_mb),
        inference_memory_mb=int(config.inference.memory_max_mb),
        trainer_nice=int(config.training.nice),
    )


def choose_board(
    board: str | None, *, root: Path, profiles_dir: Path, host_root: Path = Path("/")
) -> tuple[str, str]:
    """The profile to install and why: ``--board``, else detected on this machine.

    Detection reads this machine (``host_root``), so it is only used when installing into
    ``/``; an image for another board must name its board.

    Returns:
        (profile name, reason).

    Raises:
        ConfigError: nothing given and nothing detected.
    """
    if board:
        return board, "--board"
    known = ", ".join(list_profiles(profiles_dir)) or "none found"
    if Path(root).resolve() != Path("/"):
        raise ConfigError(
            f"installing into {root}: pass --board NAME for the target board (known: {known})"
        )
    from agent.config.detect import detect_board

    _facts, suggestion = detect_board(host_root, profiles_dir)
    if suggestion is None:
        raise ConfigError(
            f"cannot tell which board this {platform.machine()} machine is: pass --board NAME "
            f"(known: {known})"
        )
    return suggestion.profile, f"detected: {suggestion.evidence}"

"""Where install puts things, relative to a root (``/`` on a device, a temp dir in tests).

One table of names and paths, so install, uninstall and the tests agree on them. Unit files
name the default prefix ``/opt/mobizo-agent``; install rewrites it to ``--prefix``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_PREFIX = PurePosixPath("/opt/mobizo-agent")
SERVICE_USER = "mobizo"

AGENT_UNIT = "mobizo-agent.service"
INFERENCE_UNIT = "mobizo-inference.service"
TRAINER_SLICE = "mobizo-trainer.slice"
# Installed, never enabled by install: fleet learning is opt-in ([federated] enabled), and
# the unit's ExecCondition= skips it while that is off.
SUPERNODE_UNIT = "mobizo-supernode.service"
UNITS = (INFERENCE_UNIT, AGENT_UNIT, TRAINER_SLICE, SUPERNODE_UNIT)
# Services install enables/starts in this order (inference first: the agent is After= it).
SERVICES = (INFERENCE_UNIT, AGENT_UNIT)

BOARD_DROPIN = "50-board.conf"  # written from the board profile; ours, rewritten on install
NOTIFY_RELOAD_DROPIN = "60-notify-reload.conf"  # only with --notify-reload (systemd >= 253)
NOTIFY_RELOAD_EXAMPLE = "mobizo-agent.service.d/notify-reload.conf.example"

# polkit rule letting user mobizo start its burst scopes in mobizo-trainer.slice; only with
# --trainer-scope, and narrow only on systemd >= 257 (systemd/README.md, "How the daemon
# launches a burst").
TRAINER_SCOPE_RULE = "polkit-1/50-mobizo-trainer.rules"
# The project's extras the venv gets: [federated] runs mobizo-supernode.service (flwr).
PROJECT_EXTRAS = ("federated",)

SYSUSERS_NAME = "mobizo-agent.conf"
TMPFILES_NAME = "mobizo-agent.conf"

CONFIG_DIR = PurePosixPath("/etc/mobizo-agent")
CONFIG_NAME = "agent.toml"
CREDENTIALS_DIR = CONFIG_DIR / "credentials"
STATE_DIR = PurePosixPath("/var/lib/mobizo-agent")
# (path, mode): created by install so a tmp root / image looks like a booted device;
# systemd-tmpfiles and StateDirectory= create the same with the same modes.
STATE_SUBDIRS = ("bundles", "adapters", "tmp")

PREFIX_MARKER = ".mobizo-agent-prefix"  # uninstall removes a prefix only if it holds this
VENV_STAMP = ".mobizo-install.json"  # what the venv was built from (idempotence)

# torch and executorch are pinned together and installed in ONE pip command: executorch has
# no torch pin of its own, and a separate torch install can pull a mismatching build.
PINNED_REQUIREMENTS = ("torch==2.13.0", "executorch==1.5.1")


def under(root: Path, absolute: PurePosixPath | str) -> Path:
    """``absolute`` (a path on the target system) as seen from here, under ``root``."""
    rel = PurePosixPath(absolute).relative_to("/")
    return Path(root) / rel


@dataclass(frozen=True)
class Layout:
    """Every path install touches, for one (root, prefix) pair.

    Attributes:
        root: the target system's ``/`` as seen from here.
        prefix: the install prefix on the target system (absolute).
    """

    root: Path
    prefix: PurePosixPath = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.is_absolute():
            raise ValueError(f"--prefix {self.prefix}: use an absolute path like /opt/mobizo-agent")

    @property
    def unit_dir(self) -> Path:
        return under(self.root, "/etc/systemd/system")

    def unit_path(self, unit: str) -> Path:
        return self.unit_dir / unit

    def dropin_dir(self, unit: str) -> Path:
        return self.unit_dir / f"{unit}.d"

    @property
    def sysusers_path(self) -> Path:
        return under(self.root, "/usr/lib/sysusers.d") / SYSUSERS_NAME

    @property
    def polkit_rule_path(self) -> Path:
        return under(self.root, "/etc/polkit-1/rules.d") / PurePosixPath(TRAINER_SCOPE_RULE).name

    @property
    def tmpfiles_path(self) -> Path:
        return under(self.root, "/usr/lib/tmpfiles.d") / TMPFILES_NAME

    @property
    def config_dir(self) -> Path:
        return under(self.root, CONFIG_DIR)

    @property
    def config_path(self) -> Path:
        return self.config_dir / CONFIG_NAME

    @property
    def credentials_dir(self) -> Path:
        return under(self.root, CREDENTIALS_DIR)

    @property
    def state_dir(self) -> Path:
        return under(self.root, STATE_DIR)

    @property
    def prefix_dir(self) -> Path:
        return under(self.root, self.prefix)

    @property
    def venv_dir(self) -> Path:
        return self.prefix_dir / "venv"

    @property
    def profiles_dir(self) -> Path:
        """Installed copy of firmware_configs/ (the units point MOBIZO_PROFILES_DIR here)."""
        return self.prefix_dir / "firmware_configs"

    @property
    def executable(self) -> PurePosixPath:
        """``mobizo-agent`` inside the venv, as the units name it on the target system."""
        return self.prefix / "venv" / "bin" / "mobizo-agent"

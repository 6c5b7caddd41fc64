"""Plan the removal of what install added. User data stays unless ``purge``.

Removed: the units and install's own drop-ins (an operator's override.conf stays, and so does
its directory), sysusers.d/tmpfiles.d entries, and the prefix (venv, profiles) when it holds
install's marker file. Kept unless ``purge``: /var/lib/mobizo-agent (interactions, adapters,
checkpoints) and /etc/mobizo-agent (config, credentials) — as ``apt remove`` keeps conffiles.
The ``mobizo`` user and group always stay: systemd-sysusers never deletes accounts, because
files owned by a reused uid would change hands.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from agent.deploy.actions import Plan, RemovePath, RunCommand
from agent.deploy.host import HostFacts
from agent.deploy.layout import (
    BOARD_DROPIN,
    DEFAULT_PREFIX,
    NOTIFY_RELOAD_DROPIN,
    PREFIX_MARKER,
    SERVICES,
    SUPERNODE_UNIT,
    UNITS,
    Layout,
)


def plan_uninstall(
    root: Path, host: HostFacts, *, prefix: PurePosixPath = DEFAULT_PREFIX, purge: bool = False
) -> tuple[Plan, Layout]:
    """Every removal still needed (nothing when already uninstalled)."""
    layout = Layout(Path(root), PurePosixPath(prefix))
    live = Path(root).resolve() == Path("/")
    plan = Plan()
    installed_units = [u for u in UNITS if layout.unit_path(u).exists()]

    if live and host.systemd_running and installed_units:
        # the SuperNode too (installed, enabled only by an operator who opted in)
        services = [s for s in (*SERVICES, SUPERNODE_UNIT) if s in installed_units]
        if services:
            # Reverse start order: the agent checkpoints its burst, then the service goes.
            plan.add(RunCommand(("systemctl", "disable", "--now", *reversed(services)),
                                why="stop and disable"))

    if not (live and host.systemd_running):
        # `systemctl enable` links (e.g. made in an image with `systemctl --root=R enable`);
        # on a running system `systemctl disable` above removes them.
        # (glob() would skip them: an absolute link target dangles outside the root.)
        for wants in sorted(layout.unit_dir.glob("*.wants")):
            for unit in UNITS:
                if (wants / unit).is_symlink():
                    plan.add(RemovePath(wants / unit))

    for unit in UNITS:
        if layout.unit_path(unit).exists():
            plan.add(RemovePath(layout.unit_path(unit)))
        dropins = layout.dropin_dir(unit)
        for name in (BOARD_DROPIN, NOTIFY_RELOAD_DROPIN):
            if (dropins / name).exists():
                plan.add(RemovePath(dropins / name))
        if dropins.is_dir():
            others = sorted(p.name for p in dropins.iterdir()
                            if p.name not in (BOARD_DROPIN, NOTIFY_RELOAD_DROPIN))
            if others:
                plan.notes.append(f"kept your drop-ins in {dropins}: {', '.join(others)}")
            else:
                plan.add(RemovePath(dropins, only_if_empty=True))
    for path in (layout.sysusers_path, layout.tmpfiles_path, layout.polkit_rule_path):
        if path.exists():
            plan.add(RemovePath(path))

    if layout.prefix_dir.exists():
        if (layout.prefix_dir / PREFIX_MARKER).is_file():
            plan.add(RemovePath(layout.prefix_dir, tree=True))
        else:
            plan.notes.append(
                f"left {layout.prefix_dir} alone: it has no {PREFIX_MARKER}, so install did not "
                "make it (wrong --prefix?)"
            )

    for path, what in ((layout.state_dir, "data"), (layout.config_dir, "config and credentials")):
        if not path.exists():
            continue
        if purge:
            plan.add(RemovePath(path, tree=True))
        else:
            plan.notes.append(f"kept {what} in {path} (remove with --purge)")

    if live and host.systemd_running and plan.actions:
        plan.add(RunCommand(("systemctl", "daemon-reload"), why="forget the removed units"))
    plan.notes.append("user and group mobizo are kept (systemd-sysusers never removes accounts)")
    return plan, layout

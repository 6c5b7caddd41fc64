"""Plan an install of mobizo-agent into a root: venv, units, users, directories, config.

:func:`plan_install` looks at the target and returns only the changes still needed (a second
run plans nothing); :func:`agent.deploy.actions.apply` carries them out. The live-system steps
(systemd-sysusers, systemd-tmpfiles, daemon-reload) are planned only when the root is ``/`` and
systemd is running; an image or a test root gets them at first boot from
systemd-sysusers.service and systemd-tmpfiles-setup.service, which read the same files.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from agent.config.service import TOKEN_FILE_NAME
from agent.deploy.actions import (
    CopyFile,
    DeployError,
    EnsureDir,
    Plan,
    RunCommand,
    WriteFile,
    copy_differs,
    dir_differs,
    file_differs,
)
from agent.deploy.board import BoardCaps, board_caps, choose_board
from agent.deploy.host import HostFacts
from agent.deploy.layout import (
    AGENT_UNIT,
    BOARD_DROPIN,
    DEFAULT_PREFIX,
    NOTIFY_RELOAD_DROPIN,
    NOTIFY_RELOAD_EXAMPLE,
    PINNED_REQUIREMENTS,
    PREFIX_MARKER,
    PROJECT_EXTRAS,
    STATE_DIR,
    STATE_SUBDIRS,
    TRAINER_SCOPE_RULE,
    UNITS,
    VENV_STAMP,
    Layout,
)
from agent.deploy.render import decide_config, render_board_dropins, render_config, render_unit
from agent.deploy.torch_index import TorchIndex, torch_source
from agent.io.bundle_files import read_manifest
from agent.io.token_file import new_token

NotifyReload = Literal["auto", "yes", "no"]
NOTIFY_RELOAD_MIN_SYSTEMD = 253  # Type=notify-reload appeared in systemd 253
# StartTransientUnit passes the unit's name to polkit since systemd 257 (PR #34651): before,
# a rule cannot tell our scopes from any other transient unit.
TRAINER_SCOPE_MIN_SYSTEMD = 257


@dataclass(frozen=True)
class InstallOptions:
    """What ``mobizo-agent install`` was asked to do.

    Attributes:
        source: the source checkout (holds pyproject.toml, systemd/, firmware_configs/).
        root: the target system's ``/``.
        prefix: install prefix on the target (absolute).
        board: board profile name, or None to detect (only when root is ``/``).
        venv: build the virtual environment (``--no-venv`` turns it off).
        python: interpreter that creates the venv.
        pip_args: extra arguments for the one pip command (e.g. an index URL).
        notify_reload: install the Type=notify-reload drop-in: yes, no, or auto (systemd >= 253
            on a live root).
        bundle: a model bundle directory to copy to /var/lib/mobizo-agent/bundle (the path
            the inference unit and the config default name), or None.
        torch_index: where torch comes from: auto (PyTorch's CPU-only index on aarch64, where
            PyPI's build is CUDA's), cpu, or pypi; see agent/deploy/torch_index.py.
        trainer_scope: install the polkit rule that lets the daemon start its bursts as scopes
            in mobizo-trainer.slice (systemd >= 257 only; off by default, see README).
    """

    source: Path
    root: Path = Path("/")
    prefix: PurePosixPath = DEFAULT_PREFIX
    board: str | None = None
    venv: bool = True
    python: str = sys.executable
    pip_args: tuple[str, ...] = ()
    notify_reload: NotifyReload = "auto"
    bundle: Path | None = None
    torch_index: TorchIndex = "auto"
    trainer_scope: bool = False


def find_source(start: Path | None = None) -> Path:
    """The source checkout this code runs from (pyproject.toml + systemd/ + firmware_configs/).

    Raises:
        DeployError: running from an installed copy without a checkout; pass ``--source``.
    """
    here = Path(__file__).resolve() if start is None else Path(start).resolve()
    for candidate in (here, *here.parents):
        if all((candidate / n).exists() for n in ("pyproject.toml", "systemd", "firmware_configs")):
            return candidate
    raise DeployError(
        "cannot find the mobizo-agent source checkout (pyproject.toml, systemd/, "
        "firmware_configs/) above this installation: run install from a checkout "
        "(`.venv/bin/mobizo-agent install`) or pass --source DIR"
    )


def check_source(source: Path) -> None:
    """Raise DeployError unless ``source`` has every file install copies."""
    needed = [source / "pyproject.toml", source / "firmware_configs"]
    needed += [source / "systemd" / u for u in UNITS]
    needed += [source / "systemd/README.md", source / "systemd" / NOTIFY_RELOAD_EXAMPLE]
    needed += [source / "systemd/sysusers.d/mobizo-agent.conf"]
    needed += [source / "systemd/tmpfiles.d/mobizo-agent.conf"]
    needed += [source / "systemd" / TRAINER_SCOPE_RULE]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise DeployError(f"--source {source} is incomplete, missing: {', '.join(missing)}")


def source_digest(source: Path) -> str:
    """A digest of what pip would install from ``source`` (pyproject + package sources)."""
    h = hashlib.sha256()
    files = [source / "pyproject.toml"]
    for package in ("agent", "exporter"):
        files += sorted(p for p in (source / package).rglob("*") if p.is_file()
                        and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def wants_notify_reload(choice: NotifyReload, root: Path, host: HostFacts) -> bool:
    """Whether to install the Type=notify-reload drop-in."""
    if choice != "auto":
        return choice == "yes"
    live = Path(root).resolve() == Path("/")
    return bool(live and host.systemd_version and host.systemd_version >= NOTIFY_RELOAD_MIN_SYSTEMD)


def plan_install(opts: InstallOptions, host: HostFacts) -> tuple[Plan, Layout]:
    """Every change still needed to install into ``opts.root``.

    Raises:
        DeployError / ConfigError: bad source, unknown board, or a profile that does not validate.
    """
    check_source(opts.source)
    layout = Layout(Path(opts.root), PurePosixPath(opts.prefix))
    live = Path(opts.root).resolve() == Path("/")
    plan = Plan()
    profiles_src = opts.source / "firmware_configs"
    board, reason = choose_board(opts.board, root=layout.root, profiles_dir=profiles_src)
    caps = board_caps(board, profiles_src)
    plan.notes.append(f"board profile: {board} ({reason}); machine: {host.arch}")
    steps = _Steps(plan)
    _plan_prefix(steps, opts, layout, host)
    _plan_units(steps, opts, layout, host, board, caps)
    owner = host.service_ids if live else None
    _plan_state(steps, opts, layout, owner)
    _plan_config(plan, layout, render_config(board, reason))  # never overwrites an edited one
    _plan_system(plan, layout, host, live)
    return plan, layout


@dataclass
class _Steps:
    """Adds to ``plan`` only what differs from the target as it is now."""

    plan: Plan

    def ensure_dir(self, path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
        if dir_differs(path, mode, owner):
            self.plan.add(EnsureDir(path, mode, owner))

    def write(self, path: Path, data: str | bytes, mode: int = 0o644, why: str = "") -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if file_differs(path, raw, mode):
            self.plan.add(WriteFile(path, raw, mode, why))


def _plan_prefix(steps: _Steps, opts: InstallOptions, layout: Layout,
                 host: HostFacts) -> None:
    """The prefix: marker (so uninstall knows it may remove it), profiles, docs, venv."""
    steps.ensure_dir(layout.prefix_dir, 0o755)
    steps.write(layout.prefix_dir / PREFIX_MARKER,
                "mobizo-agent install prefix: `mobizo-agent uninstall` removes this directory\n")
    steps.ensure_dir(layout.profiles_dir, 0o755)
    for profile in sorted((opts.source / "firmware_configs").glob("*.toml")):
        steps.write(layout.profiles_dir / profile.name, profile.read_bytes())
    docs = layout.prefix_dir / "share" / "systemd"
    steps.ensure_dir(docs.parent, 0o755)
    steps.ensure_dir(docs, 0o755)
    for rel in ("README.md", NOTIFY_RELOAD_EXAMPLE):
        steps.write(docs / Path(rel).name, (opts.source / "systemd" / rel).read_bytes())
    if opts.venv:
        _plan_venv(steps.plan, opts, layout, host.arch)
    else:
        steps.plan.notes.append(
            f"--no-venv: the units run {layout.executable}; make sure it exists")


def _plan_units(steps: _Steps, opts: InstallOptions, layout: Layout, host: HostFacts,
                board: str, caps: BoardCaps) -> None:
    """Units, drop-ins (the board's caps, notify-reload), sysusers.d, tmpfiles.d."""
    systemd_src = opts.source / "systemd"
    for unit in UNITS:
        text = (systemd_src / unit).read_text(encoding="utf-8")
        steps.write(layout.unit_path(unit), render_unit(text, layout.prefix))
    for unit, text in render_board_dropins(caps).items():
        steps.write(layout.dropin_dir(unit) / BOARD_DROPIN, text, why=f"caps of {board}")
    reload_dropin = layout.dropin_dir(AGENT_UNIT) / NOTIFY_RELOAD_DROPIN
    if wants_notify_reload(opts.notify_reload, layout.root, host):
        steps.write(reload_dropin, (systemd_src / NOTIFY_RELOAD_EXAMPLE).read_bytes(),
                    why="systemd >= 253: Type=notify-reload")
    elif reload_dropin.exists():
        steps.plan.notes.append(f"kept {reload_dropin} (remove it by hand on systemd < 253)")
    _plan_trainer_scope(steps, opts, layout, host)
    steps.write(layout.sysusers_path,
                (systemd_src / "sysusers.d/mobizo-agent.conf").read_bytes())
    steps.write(layout.tmpfiles_path,
                (systemd_src / "tmpfiles.d/mobizo-agent.conf").read_bytes())


def _plan_trainer_scope(steps: _Steps, opts: InstallOptions, layout: Layout,
                        host: HostFacts) -> None:
    """The polkit rule for burst scopes: only when asked, and only where it can be narrow."""
    rule = layout.polkit_rule_path
    if not opts.trainer_scope:
        if rule.exists():
            steps.plan.notes.append(f"kept {rule} (remove it to have bursts fork again)")
        return
    live = Path(opts.root).resolve() == Path("/")
    version = host.systemd_version
    if live and version is not None and version < TRAINER_SCOPE_MIN_SYSTEMD:
        raise DeployError(
            f"--trainer-scope needs systemd >= {TRAINER_SCOPE_MIN_SYSTEMD} (this is {version}): "
            "older managers give polkit no unit name for a transient unit, so the rule could "
            "not be narrowed to the burst scopes; leave it off and bursts fork inside "
            "mobizo-agent.service under its MemoryMax (systemd/README.md)")
    steps.write(rule, (opts.source / "systemd" / TRAINER_SCOPE_RULE).read_bytes(),
                why=f"bursts as scopes in mobizo-trainer.slice (systemd >= "
                f"{TRAINER_SCOPE_MIN_SYSTEMD}; polkitd must be installed)")


def _plan_state(steps: _Steps, opts: InstallOptions, layout: Layout,
                owner: tuple[int, int] | None) -> None:
    """Directories (as tmpfiles.d says; owned by the service user once it exists), bundle."""
    steps.ensure_dir(layout.config_dir, 0o755)
    steps.ensure_dir(layout.credentials_dir, 0o700)
    steps.ensure_dir(layout.state_dir, 0o700, owner)  # the user's text: owner only
    for sub in STATE_SUBDIRS:
        steps.ensure_dir(layout.state_dir / sub, 0o700, owner)
    _plan_token(steps.plan, layout, owner)
    if opts.bundle is not None:
        _plan_bundle(steps.plan, Path(opts.bundle), layout.state_dir / "bundle", owner)
    elif not (layout.state_dir / "bundle" / "manifest.json").exists():
        steps.plan.notes.append(
            f"no model bundle at {STATE_DIR}/bundle yet: mobizo-inference.service cannot start "
            "without one; rerun with --bundle DIR (a `mobizo-export` output)"
        )


def _plan_token(plan: Plan, layout: Layout, owner: tuple[int, int] | None) -> None:
    """The local API's bearer token: 0600, owned by the service user; never replaced."""
    path = layout.state_dir / TOKEN_FILE_NAME
    if path.exists():
        return
    if owner is None:  # no service user yet: a root-owned token would lock the service out
        plan.notes.append(f"the inference service makes its API token {STATE_DIR}/"
                          f"{TOKEN_FILE_NAME} (mode 0600) at its first start")
        return
    plan.add(WriteFile(path, (new_token() + "\n").encode("ascii"), 0o600,
                       "bearer token of the local inference API", owner))


def _plan_system(plan: Plan, layout: Layout, host: HostFacts, live: bool) -> None:
    """The live system: users, directories, unit reload (or a note on when they happen)."""
    if live and host.systemd_running:
        if plan.actions or host.service_ids is None:
            plan.add(RunCommand(("systemd-sysusers", str(layout.sysusers_path)),
                                why="create user and group mobizo"))
            plan.add(RunCommand(("systemd-tmpfiles", "--create", str(layout.tmpfiles_path)),
                                why="directories and their owners"))
            plan.add(RunCommand(("systemctl", "daemon-reload"), why="load the new units"))
        plan.notes.append(
            "start it: systemctl enable --now mobizo-inference.service mobizo-agent.service"
        )
    elif live:
        plan.notes.append(
            "systemd is not running here: user mobizo and the directory owners are made at "
            "next boot (systemd-sysusers/-tmpfiles), or now with `systemd-sysusers` and "
            "`systemd-tmpfiles --create`"
        )
    else:
        plan.notes.append(
            f"installed into {layout.root}: systemd-sysusers and systemd-tmpfiles create the "
            "user and directories at its first boot"
        )


def _plan_venv(plan: Plan, opts: InstallOptions, layout: Layout, arch: str) -> None:
    python = layout.venv_dir / "bin" / "python"
    stamp_path = layout.venv_dir / VENV_STAMP
    torch = torch_source(opts.torch_index, arch, opts.pip_args, PINNED_REQUIREMENTS)
    plan.notes.append(torch.note)
    stamp = json.dumps({
        "requirements": list(torch.requirements),
        "extras": list(PROJECT_EXTRAS),
        "source_digest": source_digest(opts.source),
        "pip_args": list(opts.pip_args) + list(torch.pip_args),
    }, indent=2, sort_keys=True) + "\n"
    try:
        current = stamp_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current == stamp and python.exists():
        return
    if not python.exists():
        plan.add(RunCommand((opts.python, "-m", "venv", str(layout.venv_dir)),
                            why="virtual environment"))
    # ONE pip command: torch and executorch resolved together (see layout.PINNED_REQUIREMENTS).
    plan.add(RunCommand(
        (str(python), "-m", "pip", "install", "--upgrade", *opts.pip_args, *torch.pip_args,
         *torch.requirements, f"{opts.source}[{','.join(PROJECT_EXTRAS)}]"),
        why="mobizo-agent with torch and executorch pinned together",
    ))
    plan.add(WriteFile(stamp_path, stamp.encode("utf-8"), 0o644, "what the venv was built from"))


def _plan_bundle(plan: Plan, src: Path, dst: Path, owner: tuple[int, int] | None) -> None:
    read_manifest(src)  # BundleError with a fix if it is not a complete bundle
    if dir_differs(dst, 0o755, owner):
        plan.add(EnsureDir(dst, 0o755, owner))
    for path in sorted(src.rglob("*")):  # sorted: a directory comes before its files
        target = dst / path.relative_to(src)
        if path.is_dir():
            if dir_differs(target, 0o755, owner):
                plan.add(EnsureDir(target, 0o755, owner))
        elif path.is_file() and copy_differs(path, target, 0o644):
            plan.add(CopyFile(path, target, 0o644, owner))


def _plan_config(plan: Plan, layout: Layout, wanted: str) -> None:
    path = layout.config_path
    new_path = path.with_name(path.name + ".new")
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    existing_new = new_path.read_text(encoding="utf-8") if new_path.is_file() else None
    decision = decide_config(existing, existing_new, wanted)
    if decision.action in ("create", "replace"):
        plan.add(WriteFile(path, wanted.encode("utf-8"), 0o644, decision.reason))
    elif decision.action == "keep-write-new":
        plan.add(WriteFile(new_path, wanted.encode("utf-8"), 0o644, decision.reason))
        plan.notes.append(f"{path}: {decision.reason}")
    elif decision.action == "keep":
        plan.notes.append(f"{path}: {decision.reason}")

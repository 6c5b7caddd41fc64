"""The steps install and uninstall take, as data: planned first, printed, then applied.

Planning compares against what is on disk, so a plan holds only real changes: a second
install plans nothing, and ``--dry-run`` prints exactly what a real run would do.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent.errors import MobizoError
from agent.io.atomic import atomic_copy, atomic_write_with


class DeployError(MobizoError):
    """Install or uninstall cannot go on (a step failed, or the target looks wrong)."""


@dataclass(frozen=True)
class EnsureDir:
    """Create a directory (and parents) or fix its mode; chown when ``owner`` is given."""

    path: Path
    mode: int
    owner: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"mkdir  {self.path} ({self.mode:04o})"


@dataclass(frozen=True)
class WriteFile:
    """Write a file atomically (temp + fsync + rename + directory fsync); chown when ``owner``
    is given (the file is never readable by anyone else in between)."""

    path: Path
    data: bytes
    mode: int = 0o644
    why: str = ""
    owner: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"write  {self.path}" + (f"  ({self.why})" if self.why else "")


@dataclass(frozen=True)
class CopyFile:
    """Copy a (possibly large) file atomically, streaming; chown when ``owner`` is given."""

    src: Path
    path: Path
    mode: int = 0o644
    owner: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"copy   {self.src} -> {self.path}"


@dataclass(frozen=True)
class RemovePath:
    """Remove a file, a whole tree (``tree``), or a directory only if it is empty."""

    path: Path
    tree: bool = False
    only_if_empty: bool = False

    def describe(self) -> str:
        kind = "rm -r " if self.tree else ("rmdir " if self.only_if_empty else "rm    ")
        return f"{kind} {self.path}"


@dataclass(frozen=True)
class RunCommand:
    """Run a program (pip, systemctl, ...); a non-zero exit stops the run."""

    argv: tuple[str, ...]
    why: str = ""
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return "run    " + " ".join(self.argv) + (f"  ({self.why})" if self.why else "")


Action = EnsureDir | WriteFile | CopyFile | RemovePath | RunCommand
Runner = Callable[..., subprocess.CompletedProcess[bytes]]


@dataclass
class Plan:
    """Planned actions plus notes for the operator (things not done, next steps)."""

    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, action: Action) -> None:
        self.actions.append(action)

    def describe(self) -> list[str]:
        return [a.describe() for a in self.actions]


def file_differs(path: Path, data: bytes, mode: int) -> bool:
    """Whether writing ``data`` with ``mode`` to ``path`` would change anything."""
    try:
        st = path.stat()
        return (st.st_mode & 0o7777) != mode or path.read_bytes() != data
    except FileNotFoundError:
        return True


def copy_differs(src: Path, dst: Path, mode: int) -> bool:
    """Whether ``CopyFile(src, dst, mode)`` would change anything (compares content)."""
    try:
        st = dst.stat()
    except FileNotFoundError:
        return True
    return (st.st_mode & 0o7777) != mode or not filecmp.cmp(src, dst, shallow=False)


def dir_differs(path: Path, mode: int, owner: tuple[int, int] | None) -> bool:
    """Whether ``EnsureDir(path, mode, owner)`` would change anything."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    if (st.st_mode & 0o7777) != mode:
        return True
    return owner is not None and (st.st_uid, st.st_gid) != owner


def apply(
    actions: Sequence[Action],
    *,
    run: Runner = subprocess.run,
    log: Callable[[str], None] = print,
) -> None:
    """Carry out ``actions`` in order, logging each one.

    Raises:
        DeployError: a command failed or a path could not be written.
    """
    for action in actions:
        log(action.describe())
        try:
            _apply_one(action, run)
        except OSError as exc:
            raise DeployError(f"{action.describe().strip()}: {exc}") from exc


def _apply_one(action: Action, run: Runner) -> None:
    if isinstance(action, EnsureDir):
        action.path.mkdir(parents=True, exist_ok=True)
        os.chmod(action.path, action.mode)  # mkdir's mode is masked by the umask
        if action.owner is not None:
            os.chown(action.path, *action.owner)
    elif isinstance(action, WriteFile):
        data = action.data

        def write(fh: IO[bytes]) -> None:
            fh.write(data)

        atomic_write_with(action.path, write, mode=action.mode, owner=action.owner)
    elif isinstance(action, CopyFile):
        atomic_copy(action.src, action.path, mode=action.mode, owner=action.owner)
    elif isinstance(action, RemovePath):
        if action.tree:
            shutil.rmtree(action.path, ignore_errors=False)
        elif action.only_if_empty:
            if action.path.is_dir() and not any(action.path.iterdir()):
                action.path.rmdir()
        else:
            action.path.unlink(missing_ok=True)
    else:
        env = {**os.environ, **dict(action.env)} if action.env else None
        done = run(list(action.argv), env=env, check=False)
        if done.returncode != 0:
            raise DeployError(
                f"`{' '.join(action.argv)}` failed with exit {done.returncode}"
                + (f" ({action.why})" if action.why else "")
                + "; fix the cause above and run the same command again (it is idempotent)"
            )


def report(plan: Plan, *, verb: str, nothing_to_do: str, dry_run: bool,
           log: Callable[[str], None] = print) -> None:
    """What install and uninstall show the operator, and the run itself.

    Prints ``nothing_to_do`` for an empty plan, lists the plan under ``dry run: VERB would``
    for a dry run, otherwise applies it (each step logged as it runs); the plan's notes come
    last, so they follow the steps they are about.

    Raises:
        DeployError: a step failed (see :func:`apply`); the notes are not printed then.
    """
    if not plan.actions:
        log(nothing_to_do)
    elif dry_run:
        log(f"dry run: {verb} would")
        for line in plan.describe():
            log("  " + line)
    else:
        apply(plan.actions, log=log)
    for note in plan.notes:
        log(f"note: {note}")

"""Writes that survive power loss: temp file, fsync, rename over, fsync the directory.

Every file the agent must not find half-written after a power cut goes through here: the
runtime overrides, the status file, run state, training checkpoints, the registry's
``active`` pointer, adapters, installed files. An SD card that loses power mid-write then
holds either the old file or the new one, never half of each (STYLE.md §6).

The order matters (rename(2); ext4's data=ordered notes): the data is fsynced before the
rename so the new name never points at unwritten blocks, and the directory is fsynced after
it so the rename itself is on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: Temp files end in this (and start with a dot) so a sweep can tell them from real files.
TEMP_SUFFIX = ".tmp"

#: Called after the temp file is durable and before the rename (tests crash there).
BeforeReplace = Callable[[], None]


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories need ``O_RDONLY``); errors propagate."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives power loss; best effort.

    A no-op where the directory cannot be opened or the filesystem refuses fsync on
    directories (some FUSE mounts do): the data itself is already synced.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(
    path: Path,
    write: Callable[[IO[bytes]], None],
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    keep_previous: Path | None = None,
    before_replace: BeforeReplace | None = None,
) -> Path:
    """Replace ``path`` with what ``write`` writes, atomically and durably.

    Args:
        path: destination; its parent directory is created if missing.
        write: writes the complete new content to the binary file it is given.
        mode: permission bits of the new file (set on the open file, so the umask does not
            apply).
        owner: ``(uid, gid)`` to chown the new file to, or None to leave it.
        keep_previous: if given and ``path`` exists, it is renamed here first (a second
            generation; the old one there is replaced).
        before_replace: called once the temp file is synced, just before the rename.

    Returns:
        ``path``.

    Raises:
        OSError: the write, sync or rename failed; the temp file is removed and ``path`` is
            as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    keep_previous: Path | None = None,
    before_replace: BeforeReplace | None = None,
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (see :func:`atomic_write_with`)."""
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return atomic_write_with(path, write, mode=mode,
                             keep_previous=keep_previous, before_replace=before_replace)


def atomic_write_text(
    path: Path, text: str, *, mode: int = 0o644, before_replace: BeforeReplace | None = None
) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode,
                              before_replace=before_replace)


def atomic_write_json(
    path: Path, value: Any, *, mode: int = 0o644, indent: int | None = None
) -> Path:
    """:func:`atomic_write_text` of ``value`` as JSON (non-ASCII kept as is)."""
    return atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False),
                             mode=mode)


def atomic_copy(
    src: Path, path: Path, *, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Path:
    """Copy ``src`` over ``path`` atomically, streaming (for files too large to hold)."""
    def copy(out: IO[bytes]) -> None:
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, out, 1 << 20)

    return atomic_write_with(path, copy, mode=mode, owner=owner)


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync a file in place: for files inside a directory staged for
    :func:`replace_dir`, where the directory rename is what makes them appear at once."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def staging_dir(final: Path, *, prefix: str | None = None) -> Path:
    """A fresh empty directory beside ``final`` to build its new content in.

    Args:
        final: where the staged directory will be renamed to by :func:`replace_dir`.
        prefix: name prefix of the staged directory; ``.<final name>.tmp-`` by default.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix or f".{final.name}.tmp-", dir=final.parent))


def replace_dir(staged: Path, final: Path) -> Path:
    """Put a fully written directory in place of ``final`` atomically and durably.

    ``staged`` (whose files are already synced, see :func:`write_synced`) is fsynced, the old
    ``final`` (if any) moved aside, ``staged`` renamed to ``final``, the parent fsynced, and the
    old content removed. A crash leaves either the old directory or the new one at ``final``
    (and at worst a hidden leftover beside it).

    Raises:
        OSError: a rename failed; ``staged`` is left for the caller to remove.
    """
    fsync_dir(staged)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final

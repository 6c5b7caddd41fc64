"""A small tmpfs the test mounts itself, to fill it (ENOSPC) or remount it read-only (EROFS).

The faults are the kernel's own, on a real filesystem: nothing is patched. Mounting needs
root (or CAP_SYS_ADMIN); where it is not permitted the tests that need it are skipped with
the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisk:
    """A mounted tmpfs of a few MiB at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self, leave: int = 0) -> None:
        """Fill the filesystem until at most ``leave`` bytes are free (ENOSPC after that)."""
        with open(self.filler, "ab") as fh:
            block = b"\0" * 4096
            while True:
                st = os.statvfs(self.path)
                if st.f_bavail * st.f_frsize <= leave:
                    break
                try:
                    fh.write(block)
                    fh.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break

    def free(self) -> None:
        """Give the filler's space back."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def read_only(self, on: bool) -> None:
        """Remount read-only (``on``) or read-write again."""
        opts = "remount,ro" if on else "remount,rw"
        subprocess.run(["mount", "-o", opts, str(self.path)], check=True, capture_output=True)


@contextlib.contextmanager
def small_disk(where: Path, size: str = "4m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` at ``where`` for the block; skip the test if not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-fault test (needs root or "
                    f"CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(where)], capture_output=True)
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def ext4_disk(tmp_path: Path, size_mb: int = 16) -> Iterator[SmallDisk]:
    """A loop-mounted ext4 image whose :meth:`abort` makes the kernel remount it read-only
    under open files, as it does after an I/O error on an SD card (``errors=remount-ro``).

    A tmpfs refuses ``remount,ro`` while a file is open for writing (SQLite always has one);
    ext4's ``abort`` option is the kernel's own emergency path. Skipped where loop devices or
    mkfs.ext4 are missing.
    """
    image, where = tmp_path / "ext4.img", tmp_path / "ext4"
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(where)],
        capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot loop-mount an ext4 image for the read-only test (needs root, "
                    f"loop devices and mkfs.ext4): {made.stderr.strip()}")
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        image.unlink(missing_ok=True)


def abort(disk: SmallDisk) -> None:
    """ext4's emergency read-only remount, with files still open (see :func:`ext4_disk`)."""
    subprocess.run(["mount", "-o", "remount,abort", str(disk.path)], check=True,
                   capture_output=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs under ``tmp_path`` (see :func:`small_disk`)."""
    with small_disk(tmp_path / "disk") as mounted:
        yield mounted

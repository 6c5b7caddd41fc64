"""Let go of the resident pages of a memory-mapped weights file (Linux).

The ExecuTorch runtime mmaps a program's ``.ptd`` data file and ``mlock``s every segment it
maps (its data loader's default, ``UseMlockIgnoreErrors``): a process that may lock memory
(root, CAP_IPC_LOCK) pins the whole file, an unprivileged one under the usual 8 MiB
``RLIMIT_MEMLOCK`` pins nothing. What stays mapped after the methods are loaded is what
XNNPACK did not pack: the embedding table, read one row per token. Unpinned and dropped from
the process, its pages come back from the page cache as the lookup touches them, so the
process holds the rows it uses (as llama.cpp's mmapped weights do) and the kernel may evict
the rest under pressure; packed weights are anonymous memory and are not touched here.

Only read-only mappings of the named file are released: their pages always equal the file's,
so dropping them loses nothing (a later read faults the same bytes back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def mapped_ranges(path: Path, maps: str | None = None) -> list[tuple[int, int]]:
    """``(start, length)`` of this process's read-only mappings of ``path``.

    Args:
        path: the mapped file.
        maps: the text of /proc/self/maps (read when None; for tests).
    """
    target = os.path.realpath(path)
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:  # not Linux: nothing to release
            return []
    ranges = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5] != target or "w" in parts[1]:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        ranges.append((lo, hi - lo))
    return ranges


def release_file_pages(path: Path) -> int:
    """Unpin and drop this process's resident pages of ``path``'s read-only mappings.

    Returns the bytes of the ranges released (0 where there is nothing to release, or where
    the system calls are not available: the pages then stay as the runtime left them).
    """
    ranges = mapped_ranges(path)
    libc = _libc() if ranges else None
    if libc is None:
        return 0
    released = 0
    for start, length in ranges:
        addr, size = ctypes.c_void_p(start), ctypes.c_size_t(length)
        libc.munlock(addr, size)  # fails harmlessly where nothing was locked
        if libc.madvise(addr, size, ctypes.c_int(MADV_DONTNEED)) != 0:
            log.debug("madvise(%s) failed: %s", path, os.strerror(ctypes.get_errno()))
            continue
        released += length
    return released

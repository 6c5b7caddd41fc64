"""A mapped weights file's pages are let go once the methods are loaded (agent/io/file_pages.py):
the process keeps the rows it reads, and the bytes read back are the file's."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import pytest

from agent.io.file_pages import mapped_ranges, release_file_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps")


def _resident_kb(path: Path) -> int:
    """Rss of this process's mappings of ``path`` (kB), from /proc/self/smaps."""
    target, inside, total = os.path.realpath(path), False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
            inside = len(head) == 6 and head[5] == target
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_only_read_only_mappings_of_the_file_are_named() -> None:
    maps = (
        "7f0000000000-7f0000400000 r--p 00000000 08:01 42   /b/weights.ptd\n"
        "7f0000400000-7f0000500000 rw-p 00000000 08:01 42   /b/weights.ptd\n"
        "7f0000500000-7f0000600000 r--p 00000000 08:01 43   /b/other.ptd\n"
        "7f0000600000-7f0000700000 rw-p 00000000 00:00 0 \n"
    )
    assert mapped_ranges(Path("/b/weights.ptd"), maps) == [(0x7F0000000000, 0x400000)]
    assert mapped_ranges(Path("/b/none.ptd"), maps) == []


@linux_only
def test_released_pages_leave_the_process_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "weights.ptd"
    data = os.urandom(8 << 20)
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:] == data  # every page touched: resident
        assert _resident_kb(path) >= 8 * 1024 - 64
        assert release_file_pages(path) == len(data)
        assert _resident_kb(path) < 1024
        assert m[4096:8192] == data[4096:8192]  # faulted back from the file
        assert m[:] == data


def test_nothing_mapped_releases_nothing(tmp_path: Path) -> None:
    assert release_file_pages(tmp_path / "absent.ptd") == 0


@linux_only
@pytest.mark.runtime
def test_a_loaded_program_keeps_no_weights_file_pages(starter_bundle: Path) -> None:
    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import InferProgram

    program = InferProgram(starter_bundle)
    weights = starter_bundle / read_manifest(starter_bundle).weights.file
    assert _resident_kb(weights) < 64  # the runtime had mapped (and pinned) the embedding
    import numpy as np

    logits = program.forward([1, 2, 3], 0, np.zeros(program.num_params, dtype=np.float32))
    assert np.isfinite(logits).all()
    assert _resident_kb(weights) < 0.25 * weights.stat().st_size / 1024  # the rows it read

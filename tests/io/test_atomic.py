"""The one atomic-write helper: content, mode, directory fsync, and nothing left on failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO

import pytest

from agent.io.atomic import (
    TEMP_SUFFIX,
    atomic_copy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    fsync_dir,
    replace_dir,
    staging_dir,
    write_synced,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_text_bytes_and_json_land_whole_with_their_mode(tmp_path: Path) -> None:
    text = atomic_write_text(tmp_path / "new" / "a.txt", "héllo\n")  # parent is created
    assert text.read_text(encoding="utf-8") == "héllo\n" and _mode(text) == 0o644
    blob = atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01", mode=0o600)
    assert blob.read_bytes() == b"\x00\x01" and _mode(blob) == 0o600
    doc = atomic_write_json(tmp_path / "c.json", {"k": [1, "ü"]}, indent=2)
    assert json.loads(doc.read_text(encoding="utf-8")) == {"k": [1, "ü"]}
    atomic_write_text(text, "second")  # replaces
    assert text.read_text() == "second"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "new") == []


def test_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = atomic_write_text(tmp_path / "x", "x", mode=0o644)
    finally:
        os.umask(old)
    assert _mode(path) == 0o644


def test_keep_previous_and_before_replace(tmp_path: Path) -> None:
    current, previous = tmp_path / "ckpt", tmp_path / "ckpt.prev"
    atomic_write_bytes(current, b"one", keep_previous=previous)
    assert not previous.exists()
    seen: list[bytes] = []
    # the hook runs once the temp file is synced, before the rename: the old content is still there
    atomic_write_bytes(current, b"two", keep_previous=previous,
                       before_replace=lambda: seen.append(current.read_bytes()))
    assert seen == [b"one"]
    assert current.read_bytes() == b"two" and previous.read_bytes() == b"one"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "f", "old")

    def explode(fh: IO[bytes]) -> None:
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_with(path, explode)
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "is_a_dir"
    (target / "child").mkdir(parents=True)  # rename over a non-empty directory fails
    with pytest.raises(OSError):
        atomic_write_text(target, "x")
    assert _leftovers(tmp_path) == [] and target.is_dir()


def test_fsync_dir_is_best_effort(tmp_path: Path) -> None:
    fsync_dir(tmp_path)  # a real directory: synced
    fsync_dir(tmp_path / "missing")  # cannot be opened: a no-op, not an error


def test_copy_streams_with_mode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))  # several copy chunks
    out = atomic_copy(src, tmp_path / "dst", mode=0o640)
    assert out.read_bytes() == src.read_bytes() and _mode(out) == 0o640


def test_replace_dir_swaps_a_whole_directory(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    for content in (b"v1", b"v2"):
        staged = staging_dir(final)
        assert staged.parent == tmp_path and staged.name.startswith(".adapter.tmp-")
        write_synced(staged / "weights", content)
        replace_dir(staged, final)
        assert (final / "weights").read_bytes() == content
    # neither the staged nor the old directory is left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

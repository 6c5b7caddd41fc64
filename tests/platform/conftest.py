"""Fixtures of the platform tests (issue 21): the emulated Arm board, host-exported bundles.

Everything is built once and cached under build/platform/ (git-ignored); `make test-platform`
installs the Debian packages first. Where this machine cannot (not root, no binfmt_misc,
no qemu), the tests skip and say which.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.platform.board import CACHE, Board, export_bundle, make_board, write_data


@pytest.fixture(scope="session")
def arm_board() -> Board:
    board = make_board()
    if isinstance(board, str):
        pytest.skip(f"no emulated Arm board: {board}")
    return board


@pytest.fixture(scope="session")
def train_data() -> Path:
    return write_data(CACHE / "run" / "data.jsonl")


@pytest.fixture(scope="session", params=["none", "8da8w"])
def scheme_bundle(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(scheme, starter bundle exported on the host with that quantization)."""
    return request.param, export_bundle(request.param)

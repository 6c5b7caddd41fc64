"""The dense global adapter's handoff file: what the SuperNode writes, the daemon reads back
bit for bit, and every bad file is refused with what was wrong (no runtime needed)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from agent.io.dense_handoff import HandoffError, handoff_dir, read_dense, write_dense
from agent.io.federated_state import FederatedState, fresh_state, load_state, save_state

P = 48
BUNDLE = "bundle-1"


def _flat(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(P).astype(np.float32)


def _read(path: Path, directory: Path, digest: str, **over: object):
    kwargs: dict[str, object] = {"directory": directory, "sha256": digest,
                                 "bundle_id": BUNDLE, "at_round": 5, "num_params": P}
    kwargs.update(over)
    return read_dense(path, **kwargs)  # type: ignore[arg-type]


def test_what_the_supernode_writes_the_daemon_reads_bit_for_bit(tmp_path: Path) -> None:
    directory = handoff_dir(tmp_path / "state")
    flat = _flat()
    path, digest = write_dense(directory, flat, bundle_id=BUNDLE, at_round=5)
    assert path.parent == directory and oct(directory.stat().st_mode & 0o777) == "0o700"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    dense = _read(path, directory, digest)
    assert np.array_equal(dense.lora_b, flat) and dense.round == 5


@pytest.mark.parametrize(("case", "words"), [
    ("hash", "SHA-256"),
    ("truncated", "truncated"),
    ("layout", r"layout needs F32 \[48\]"),
    ("nan", "NaN"),
    ("bundle", "bundle"),
    ("round", "round"),
    ("outside", "not in the handoff directory"),
    ("symlink", "symlink"),
    ("others-write", "writable by it alone"),
    ("too-big", "at most"),
])
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, case: str, words: str) -> None:
    directory = handoff_dir(tmp_path / "state")
    flat = _flat()
    if case == "nan":
        flat[3] = np.nan
    size = P - 1 if case == "layout" else P
    path, digest = write_dense(directory, flat[:size], bundle_id="other" if case == "bundle"
                               else BUNDLE, at_round=4 if case == "round" else 5)
    if case == "hash":
        digest = "0" * 64
    elif case == "truncated":
        data = path.read_bytes()[:-10]
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()  # the hash matches: the layout does not
    elif case == "outside":
        moved = tmp_path / path.name
        moved.write_bytes(path.read_bytes())
        path = moved
    elif case == "symlink":
        link = directory / "link.safetensors"
        link.symlink_to(path)
        path = link
    elif case == "others-write":
        os.chmod(path, 0o666)
    elif case == "too-big":
        data = path.read_bytes() + b"\0" * (64 * 1024)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(HandoffError, match=words):
        _read(path, directory, digest)


def test_a_handoff_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    directory = handoff_dir(tmp_path / "state")
    path, digest = write_dense(directory, _flat(), bundle_id=BUNDLE, at_round=5)
    os.chmod(directory, 0o777)
    with pytest.raises(HandoffError, match="chmod 700"):
        _read(path, directory, digest)


def test_the_state_files_round_trip_and_a_foreign_state_starts_afresh(tmp_path: Path) -> None:
    init = _flat(1)
    assert load_state(tmp_path, BUNDLE, init).round == 0
    state = FederatedState(BUNDLE, _flat(2), _flat(3), round=7, steps_done=12)
    save_state(tmp_path, state)
    back = load_state(tmp_path, BUNDLE, init)
    assert (back.round, back.steps_done) == (7, 12)
    assert np.array_equal(back.glob, state.glob) and np.array_equal(back.personal, state.personal)
    other = load_state(tmp_path, "bundle-2", init)
    assert other.round == 0 and np.array_equal(other.glob, fresh_state("bundle-2", init).glob)


def test_a_global_copy_cut_off_from_its_state_document_is_taken_as_unknown(
        tmp_path: Path) -> None:
    init = _flat(1)
    save_state(tmp_path, FederatedState(BUNDLE, _flat(2), _flat(3), round=7, steps_done=12))
    document = (tmp_path / "state.json").read_text()
    save_state(tmp_path, FederatedState(BUNDLE, _flat(4), _flat(3), round=8, steps_done=14))
    (tmp_path / "state.json").write_text(document)  # power cut before the document's write
    back = load_state(tmp_path, BUNDLE, init)
    assert back.round == 0 and np.array_equal(back.glob, init)  # behind: caught up anew
    assert np.array_equal(back.personal, _flat(3)) and back.steps_done == 12

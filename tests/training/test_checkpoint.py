"""Checkpoints: atomic write, two generations, corruption falls back, config is validated."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import TrainingError
from agent.training import checkpoint as C


def _state(step: int, config_hash: str = "cfg") -> C.CheckpointState:
    return C.CheckpointState(step=step, run_seed=7, config_hash=config_hash,
                             data_fingerprint="data", bundle_id="bid", epoch=0, position=step)


def test_roundtrip_and_generations(tmp_path):
    assert C.load_checkpoint(tmp_path) is None
    b1, b2 = np.arange(6, dtype=np.float32), np.arange(6, dtype=np.float32) * 2
    C.save_checkpoint(tmp_path, _state(1), b1)
    C.save_checkpoint(tmp_path, _state(2), b2)
    got = C.load_checkpoint(tmp_path, config_hash="cfg", num_params=6)
    assert got is not None and got.state.step == 2 and np.array_equal(got.lora_b, b2)
    assert (tmp_path / C.PREVIOUS).exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_current_falls_back_to_previous(tmp_path, caplog, damage):
    C.save_checkpoint(tmp_path, _state(1), np.ones(64, dtype=np.float32))
    C.save_checkpoint(tmp_path, _state(2), np.full(64, 2.0, dtype=np.float32))
    cur = tmp_path / C.CURRENT
    raw = bytearray(cur.read_bytes())
    if damage == "truncate":
        cur.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flip":
        raw[-5] ^= 0x40  # inside the tensor data: only the checksum notices
        cur.write_bytes(bytes(raw))
    else:
        cur.write_bytes(b"\x00" * 100)
    got = C.load_checkpoint(tmp_path, config_hash="cfg")
    assert got is not None and got.state.step == 1 and np.all(got.lora_b == 1.0)
    assert "ignoring corrupt checkpoint" in caplog.text
    (tmp_path / C.PREVIOUS).write_bytes(b"junk")
    assert C.load_checkpoint(tmp_path) is None


def test_other_config_or_size_is_an_error(tmp_path):
    C.save_checkpoint(tmp_path, _state(3, "other"), np.zeros(4, dtype=np.float32))
    with pytest.raises(TrainingError, match="different settings"):
        C.load_checkpoint(tmp_path, config_hash="cfg")
    with pytest.raises(TrainingError, match="another bundle"):
        C.load_checkpoint(tmp_path, num_params=5)

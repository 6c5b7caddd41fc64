"""Atomic, self-validating training checkpoints: the flat B plus what a resume needs.

ZO-SGD has no optimizer state (no momentum, no Adam moments), and the perturbations and the
batches are pure functions of (run seed, step), so a checkpoint is only: the flat LoRA-B, the
next step, the run seed, the data cursor, and hashes that say which run it belongs to.

One safetensors file holds B as a tensor and the rest as JSON metadata, including B's own
sha256, so a torn or bit-flipped file is detected. Two generations are kept
(``checkpoint.safetensors`` and ``checkpoint.prev.safetensors``): writing goes to a temp file,
fsync, current → previous, temp → current, fsync of the directory (STYLE.md §6); a crash at any
point leaves at least one good file, and loading falls back to the previous one with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agent.errors import TrainingError
from agent.io.atomic import atomic_write_bytes
from agent.io.disk import describe, is_disk_fault

log = logging.getLogger(__name__)

CURRENT = "checkpoint.safetensors"
PREVIOUS = "checkpoint.prev.safetensors"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class CheckpointState:
    """Everything a resume needs besides B."""

    step: int  # steps completed == index of the next step
    run_seed: int
    config_hash: str  # hash of everything that shapes the trajectory (see TrainConfig)
    data_fingerprint: str
    bundle_id: str
    epoch: int  # data cursor at `step`: epoch and position in its order (informational;
    position: int  # the stream is a pure function of (seed, step))
    seconds: float = 0.0  # training time so far, summed over resumes


@dataclass(frozen=True)
class Checkpoint:
    state: CheckpointState
    lora_b: np.ndarray  # float32 [P]
    path: Path


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def save_checkpoint(directory: Path, state: CheckpointState, lora_b: np.ndarray) -> Path:
    """Write a checkpoint atomically, keeping the last good one as the previous generation.

    Raises:
        TrainingError: the disk is full or read-only (the checkpoints already there are
            untouched, and the temp file is gone).
        OSError: any other write failure.
    """
    from safetensors.numpy import save

    directory = Path(directory)
    flat = np.ascontiguousarray(lora_b, dtype=np.float32).reshape(-1)
    meta = {"format": str(CHECKPOINT_FORMAT), "state": json.dumps(asdict(state)),
            "lora_b_sha256": _sha(flat)}
    blob = save({"lora_b": flat}, metadata=meta)
    try:
        # owner only: B is derived from the user's data
        return atomic_write_bytes(directory / CURRENT, blob, mode=0o600,
                                  keep_previous=directory / PREVIOUS)
    except OSError as exc:
        if not is_disk_fault(exc):
            raise
        raise TrainingError(f"checkpoint of step {state.step} not written: "
                            f"{describe(directory, exc)}; the last checkpoint is kept") from exc


def _read(path: Path) -> Checkpoint:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        flat = fh.get_tensor("lora_b")
    if meta.get("format") != str(CHECKPOINT_FORMAT):
        raise ValueError(f"unknown checkpoint format {meta.get('format')!r}")
    if _sha(flat) != meta.get("lora_b_sha256"):
        raise ValueError("LoRA-B checksum mismatch (torn or corrupted write)")
    state = CheckpointState(**json.loads(meta["state"]))
    if not np.all(np.isfinite(flat)):
        raise ValueError("LoRA-B contains NaN or inf")
    return Checkpoint(state, flat.astype(np.float32, copy=False), path)


def load_checkpoint(
    directory: Path, *, config_hash: str | None = None, num_params: int | None = None
) -> Checkpoint | None:
    """The newest good checkpoint in ``directory``, or None if there is none.

    A corrupt or unreadable file is skipped with a warning (falling back to the previous
    generation). A good checkpoint from a different run configuration is an error: resuming
    it would silently train something else.

    Raises:
        TrainingError: the checkpoint belongs to another configuration or model size.
    """
    directory = Path(directory)
    for name in (CURRENT, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            ckpt = _read(path)
        except Exception as exc:  # any decode failure means "not usable", never a crash
            log.warning("ignoring corrupt checkpoint %s: %s", path, exc)
            continue
        if config_hash is not None and ckpt.state.config_hash != config_hash:
            raise TrainingError(
                f"checkpoint {path} was written by a run with different settings (bundle, data, "
                "mode, q, batch, seed, lr, eps, schedule, steps or clip); resume with the same "
                "settings, or use another --checkpoint-dir to start afresh"
            )
        if num_params is not None and ckpt.lora_b.shape != (num_params,):
            raise TrainingError(
                f"checkpoint {path} holds {ckpt.lora_b.size} LoRA-B values, this bundle has "
                f"{num_params}; it belongs to another bundle"
            )
        if name == PREVIOUS:
            log.warning("resuming from the previous checkpoint %s (step %d)", path,
                        ckpt.state.step)
        return ckpt
    return None

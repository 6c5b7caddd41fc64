"""The dense global adapter handed from the SuperNode to the daemon through a file (issue 20).

A device too far behind to replay the rounds it missed is sent the dense global adapter once
(agent/federated/strategy.py). That is megabytes, over the control socket's 64 KB line, so
the SuperNode's ClientApp writes it as a safetensors file into the handoff directory
(``<state_dir>/federated/incoming``, mode 0700, the agent's user only) and sends the daemon
the file's name, SHA-256 and the round it represents (``federated-global``). The file:

* one tensor ``lora_b``: F32, shape ``[P]``, the flat LoRA-B vector of the bundle's layout;
* metadata ``format`` (:data:`FORMAT`), ``bundle_id`` and ``round``.

:func:`read_dense` is the daemon's check, in the order a bad file fails it: the path lies in
the handoff directory (no symlink, a regular file of the agent's user, not writable by
others), the size is within the bound the layout allows, the SHA-256 matches, the header
parses and names exactly that tensor, the metadata names this bundle and the round, every
value is finite. Each failure raises :class:`HandoffError` saying what was wrong. The file
is read once, through one descriptor, so what is hashed is what is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from agent.core.federated_job import FEDERATED_DIR
from agent.errors import MobizoError
from agent.io.atomic import atomic_write_bytes

FORMAT = "mobizo-federated-global/1"
HANDOFF_DIR = "incoming"  # under <state_dir>/federated
TENSOR = "lora_b"
MAX_HEADER = 16 * 1024  # bytes of safetensors header a valid file needs, with room to spare


class HandoffError(MobizoError):
    """A dense global adapter that is refused, and why."""


@dataclass(frozen=True)
class DenseGlobal:
    """A verified dense global adapter: its flat B and the round it stands for."""

    lora_b: np.ndarray
    round: int
    bundle_id: str


def handoff_dir(state_dir: Path) -> Path:
    """Where the SuperNode leaves dense adapters for the daemon of ``state_dir``."""
    return state_dir / FEDERATED_DIR / HANDOFF_DIR


def ensure_handoff_dir(directory: Path) -> Path:
    """Create ``directory`` (0700) if missing; refuse one others can write to."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_dir(directory)
    return directory


def write_dense(directory: Path, lora_b: np.ndarray, *, bundle_id: str,
                at_round: int) -> tuple[Path, str]:
    """Write the dense global adapter after ``at_round`` for the daemon.

    Returns:
        the file's path and its SHA-256 (hex), to send with ``federated-global``.
    """
    ensure_handoff_dir(directory)
    flat = np.ascontiguousarray(np.asarray(lora_b, dtype="<f4").reshape(-1))
    data = save({TENSOR: flat}, metadata={"format": FORMAT, "bundle_id": bundle_id,
                                          "round": str(at_round)})
    path = directory / f"global-r{at_round}.safetensors"
    atomic_write_bytes(path, data)
    return path, hashlib.sha256(data).hexdigest()


def _check_dir(directory: Path) -> None:
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise HandoffError(f"the handoff directory {directory} is not a directory")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise HandoffError(f"the handoff directory {directory} must belong to this user and "
                           f"be writable by it alone (chmod 700 {directory})")


def _inside(path: Path, directory: Path) -> Path:
    """``path`` if it names a file directly in ``directory`` (after resolving), else refuse."""
    real_dir = directory.resolve()
    parent = Path(os.path.realpath(path.parent))
    if parent != real_dir or path.name in ("", ".", ".."):
        raise HandoffError(f"{path} is not in the handoff directory {directory}: the daemon "
                           "reads dense adapters from there only")
    return real_dir / path.name


def _read_once(path: Path, limit: int) -> bytes:
    """The file's bytes, opened without following a symlink, if it is a regular file of this
    user that others cannot write and not over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise HandoffError(f"{path} does not exist") from None
    except OSError as exc:
        raise HandoffError(f"cannot open {path} ({exc.strerror}): a symlink or unreadable "
                           "file is refused") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HandoffError(f"{path} is not a regular file")
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise HandoffError(f"{path} must belong to this user and be writable by it alone")
        if st.st_size > limit:
            raise HandoffError(f"{path} has {st.st_size} bytes; a dense adapter of this "
                               f"bundle has at most {limit}")
        return f.read(limit + 1)


def _header(data: bytes, path: Path) -> tuple[dict[str, object], int]:
    if len(data) < 8:
        raise HandoffError(f"{path} is truncated: {len(data)} bytes, no safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER or 8 + n > len(data):
        raise HandoffError(f"{path} is truncated or not safetensors: a header of {n} bytes "
                           f"in a file of {len(data)}")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        raise HandoffError(f"{path}: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise HandoffError(f"{path}: its safetensors header is not an object")
    return header, 8 + n


def _tensor(header: dict[str, object], start: int, data: bytes, path: Path,
            num_params: int) -> np.ndarray:
    names = sorted(k for k in header if k != "__metadata__")
    entry = header.get(TENSOR)
    if names != [TENSOR] or not isinstance(entry, dict):
        raise HandoffError(f"{path} holds {names}; a dense global adapter is the one tensor "
                           f"{TENSOR!r}")
    if entry.get("dtype") != "F32" or entry.get("shape") != [num_params]:
        raise HandoffError(f"{path}: {TENSOR} is {entry.get('dtype')} {entry.get('shape')}; "
                           f"this bundle's LoRA layout needs F32 [{num_params}]")
    want = 4 * num_params
    if entry.get("data_offsets") != [0, want] or len(data) != start + want:
        raise HandoffError(f"{path} is truncated or padded: {len(data) - start} data bytes, "
                           f"the layout needs {want}")
    return np.frombuffer(data, dtype="<f4", count=num_params, offset=start).astype(np.float32)


def read_dense(path: Path, *, directory: Path, sha256: str, bundle_id: str, at_round: int,
               num_params: int) -> DenseGlobal:
    """The verified dense global adapter at ``path`` (see the module docstring).

    Args:
        path: the file the SuperNode wrote.
        directory: the handoff directory it must lie in.
        sha256: the SHA-256 (hex) the SuperNode computed.
        bundle_id: this device's bundle.
        at_round: the round the SuperNode says it stands for.
        num_params: the bundle's flat LoRA-B size (its layout).

    Raises:
        HandoffError: naming what was wrong.
    """
    _check_dir(directory)
    real = _inside(path, directory)
    data = _read_once(real, 8 + MAX_HEADER + 4 * num_params)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise HandoffError(f"{path}: SHA-256 {digest[:16]}... differs from the "
                           f"{sha256[:16]}... sent with it (a truncated or altered file)")
    header, start = _header(data, path)
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        raise HandoffError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("bundle_id") != bundle_id:
        raise HandoffError(f"{path} is for bundle {meta.get('bundle_id')!r}; this device runs "
                           f"{bundle_id!r}")
    if meta.get("round") != str(at_round):
        raise HandoffError(f"{path} stands for round {meta.get('round')!r}, the request "
                           f"for round {at_round}")
    flat = _tensor(header, start, data, path, num_params)
    bad = int(np.count_nonzero(~np.isfinite(flat)))
    if bad:
        raise HandoffError(f"{path} has {bad} NaN or infinite values; refusing it")
    return DenseGlobal(flat, at_round, bundle_id)

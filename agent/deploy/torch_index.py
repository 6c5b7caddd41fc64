"""Where the venv's torch comes from: PyPI's CUDA build must not land on an Arm board.

PyPI's torch 2.13.0 for aarch64 is a CUDA build (``+cu130`` inside; its metadata requires
``cuda-toolkit``, ``nvidia-cudnn-cu13``, ``nvidia-nccl-cu13``, ... : gigabytes of wheels a
Raspberry Pi or a Jetson never uses: the agent runs on the CPU, and Jetson's CUDA comes from
JetPack, not PyPI). PyTorch's CPU-only index serves the same release as ``2.13.0+cpu`` with
none of them. On aarch64 the one pip command therefore pins ``torch==2.13.0+cpu`` and adds that
index with ``--extra-index-url`` (which keeps a configured PyPI mirror for everything else). The
local version ``+cpu`` makes the choice exact: with plain ``torch==2.13.0`` pip would pick the
higher of the two builds and, if both were named alike, the one its first index lists. If the
CPU index cannot be reached, pip fails with "No matching distribution found for
torch==2.13.0+cpu" instead of falling back to the CUDA build.

Pure: the plan shows the result in its notes and in the pip command it prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TorchIndex = Literal["auto", "cpu", "pypi"]
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
CPU_LOCAL_VERSION = "+cpu"
ARM64_MACHINES = frozenset({"aarch64", "arm64", "armv8l"})
# pip options that choose where packages come from: the operator's choice then stands.
INDEX_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--no-index", "--find-links", "-f")


@dataclass(frozen=True)
class TorchSource:
    """What the pip command adds for torch, and the plan's note saying why.

    Attributes:
        pip_args: options placed before the requirements (e.g. ``--extra-index-url URL``).
        requirements: the pinned requirements, torch's possibly with ``+cpu``.
        note: one line for the install plan.
    """

    pip_args: tuple[str, ...]
    requirements: tuple[str, ...]
    note: str


def names_an_index(pip_args: tuple[str, ...]) -> bool:
    """Whether the operator's ``--pip-args`` already say where packages come from."""
    for arg in pip_args:
        for opt in INDEX_OPTIONS:
            long_form = opt.startswith("--") and (arg == opt or arg.startswith(opt + "="))
            short_form = not opt.startswith("--") and arg.startswith(opt)  # -i URL, -iURL
            if long_form or short_form:
                return True
    return False


def torch_source(choice: TorchIndex, arch: str, pip_args: tuple[str, ...],
                 requirements: tuple[str, ...]) -> TorchSource:
    """Decide where torch comes from for a venv built on ``arch``.

    Args:
        choice: ``cpu`` (always the CPU-only index), ``pypi`` (never), or ``auto``: the CPU
            index on aarch64, unless ``pip_args`` name an index of their own.
        arch: ``uname -m`` of the machine the venv is built on.
        pip_args: the operator's extra pip arguments.
        requirements: the pinned requirements (``torch==X`` among them).

    Raises:
        ValueError: ``requirements`` has no exact ``torch==`` pin.
    """
    torch = [r for r in requirements if r.startswith("torch==")]
    if len(torch) != 1:
        raise ValueError(f"requirements {requirements!r} need exactly one torch==VERSION pin")
    arm = arch.lower() in ARM64_MACHINES
    if choice == "auto" and arm and names_an_index(pip_args):
        return TorchSource((), requirements,
                           f"torch: from the index your --pip-args name (on {arch}, PyPI's "
                           f"torch is a CUDA build: make sure yours is {CPU_LOCAL_VERSION})")
    if choice == "pypi" or (choice == "auto" and not arm):
        return TorchSource((), requirements, f"torch: {torch[0]} from the configured index")
    pin = torch[0] if torch[0].endswith(CPU_LOCAL_VERSION) else torch[0] + CPU_LOCAL_VERSION
    pinned = tuple(pin if r == torch[0] else r for r in requirements)
    why = "PyPI's aarch64 torch is a CUDA build" if arm else "--torch-index cpu"
    return TorchSource(("--extra-index-url", CPU_INDEX_URL), pinned,
                       f"torch: {pin} from the CPU-only index {CPU_INDEX_URL} ({why}; no "
                       "nvidia-* wheels)")

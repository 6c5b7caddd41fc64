"""A simulated fleet's data and devices for ``mobizo-bench fleet-learn`` and its tests.

Every device holds a slice of one shared task (the fleet's common reply style: a dash list
and one sign-off, ``reply-style`` from one seed) and its own private task (its user's
facts, ``personal-facts`` from its own seed). The shared task's held-out split is common to
all devices; each private task has its own held-out split. The data is agent/bench/tasks',
tokenized the trainer's way (agent/bench/learn_data.py).

How the shared task is split (``split``):

- ``by-category`` (default): what the issue describes, a fleet whose users share a domain's
  vocabulary but each ask about a part of it. Device d holds examples of two of the six
  train categories (d's users ask about fruits and tools, say); together the fleet covers
  all six. The shared held-out split asks new questions (other item pairs) over all six, so
  it rewards what the fleet knows together and no device knows alone, besides the common
  format and sign-off. No held-out (prompt, reply) pair occurs in any device's data.
- ``iid``: every device a random slice of the task, scored on categories no device has seen
  (the task's own held-out split). Each device's 8 examples already carry the whole shared
  signal (the format and the sign-off), so pooling the fleet's data adds nothing a device
  lacks: federated learning can only win by averaging noise here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agent.bench.learn_data import task_data
from agent.bench.tasks import make_task
from agent.bench.tasks.base import TaskExample
from agent.core import zo
from agent.federated.client_app import DeviceLearner
from agent.federated.replay import GlobalAdapter
from agent.training.data import BatchStream, Example
from agent.training.evaluate import heldout_losses

SHARED_TASK = "reply-style"
PRIVATE_TASK = "personal-facts"
Split = Literal["by-category", "iid"]
SPLITS: tuple[Split, ...] = ("by-category", "iid")
CATEGORIES_PER_DEVICE = 2


@dataclass(frozen=True)
class DeviceData:
    """One simulated device's examples: its training mix and the two held-out splits."""

    node_id: int
    train: tuple[Example, ...]
    shared_heldout: tuple[Example, ...]
    private_heldout: tuple[Example, ...]


@dataclass(frozen=True)
class Bundle:
    """What the simulation needs of a bundle: its id, initial B, tokenizer and pad id."""

    path: Path
    bundle_id: str
    init_b: np.ndarray
    tokenizer: Any
    pad_id: int
    max_length: int


def load_bundle(path: Path) -> Bundle:
    """Read a bundle's manifest, initial adapter and tokenizer."""
    from agent.core.bundle import ADAPTER_DIR
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.bundle_files import read_manifest
    from agent.training.tokenize import load_tokenizer

    manifest = read_manifest(path)
    init_b = AdapterValidator(path, manifest).load_flat_b(path / ADAPTER_DIR)
    return Bundle(path, manifest.bundle_id, np.asarray(init_b, dtype=np.float32),
                  load_tokenizer(path, manifest.tokenizer.path),
                  manifest.tokenizer.pad_token_id, manifest.train.max_length)


def fleet_data(bundle: Bundle, devices: int, *, seed: int = 0, shared_per_device: int = 8,
               private_size: int = 8, heldout_size: int = 8,
               split: Split = "by-category") -> list[DeviceData]:
    """``devices`` devices' data: a slice of the shared task each (split as ``split`` says,
    see the module docstring), plus private facts."""
    def tokenize(task: Any) -> Any:
        return task_data(task, bundle.tokenizer, max_length=bundle.max_length,
                         pad_id=bundle.pad_id)

    if split not in SPLITS:
        raise ValueError(f"unknown shared split {split!r}; choose one of {', '.join(SPLITS)}")
    task = make_task(SHARED_TASK, seed, train_size=shared_per_device * devices,
                     heldout_size=heldout_size)
    if split == "iid":
        shared = tokenize(task)
        slices = [tuple(shared.train[d::devices]) for d in range(devices)]
        heldout = shared.heldout
    else:
        parts, held = _by_category(seed, devices, shared_per_device, heldout_size)
        heldout = tokenize(replace(task, train=held, heldout=held)).heldout
        slices = [tokenize(replace(task, train=part, heldout=held)).train for part in parts]
    out = []
    for d in range(devices):
        private = tokenize(make_task(PRIVATE_TASK, seed + 1 + d, train_size=private_size,
                                     heldout_size=heldout_size))
        out.append(DeviceData(d + 1, tuple(slices[d]) + private.train, heldout,
                              private.heldout))
    return out


def _by_category(seed: int, devices: int, per_device: int, heldout_size: int
                 ) -> tuple[list[tuple[TaskExample, ...]], tuple[TaskExample, ...]]:
    """Each device's shared examples from its own two categories, and a held-out split over
    every category; all distinct (prompt, reply) pairs, none in two places."""
    # a large draw of the task's train categories (round-robin), deduplicated, in its order
    big = make_task(SHARED_TASK, seed, train_size=80 * 6, heldout_size=1)
    by_cat: dict[str, list[TaskExample]] = {}
    seen: set[tuple[str, str]] = set()
    for ex in big.train:
        if (ex.prompt, ex.response) not in seen:
            seen.add((ex.prompt, ex.response))
            by_cat.setdefault(ex.topic, []).append(ex)
    cats = sorted(by_cat)
    n_held = -(-max(heldout_size, len(cats)) // len(cats)) * len(cats)  # whole rounds
    held = tuple(by_cat[cats[i % len(cats)]].pop() for i in range(n_held))
    parts = []
    for d in range(devices):
        mine = [cats[(CATEGORIES_PER_DEVICE * d + j) % len(cats)]
                for j in range(CATEGORIES_PER_DEVICE)]
        parts.append(tuple(by_cat[mine[i % len(mine)]].pop() for i in range(per_device)))
    return parts, held


def learner(data: DeviceData, bundle: Bundle, program: zo.LossFn, *,
            seed: int = 0) -> DeviceLearner:
    """A device at round 0: the bundle's initial adapter, no personal delta."""
    stream = BatchStream(data.train, program.batch, seed + data.node_id)
    init = torch.from_numpy(bundle.init_b.copy())
    return DeviceLearner(bundle_id=bundle.bundle_id, program=program, batch_at=stream.batch_at,
                examples=len(data.train), salt=data.node_id,
                glob=GlobalAdapter(init.clone()), personal=torch.zeros_like(init))


def losses(program: zo.LossFn, examples: Sequence[Example], adapters: Sequence[torch.Tensor],
           pad_id: int) -> list[float]:
    """Held-out loss of each adapter on ``examples`` (the trainer's token-weighted mean)."""
    return heldout_losses(program, examples, [a.detach() for a in adapters], pad_id=pad_id)

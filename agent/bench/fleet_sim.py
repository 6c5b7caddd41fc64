"""A simulated fleet's data and devices for ``mobizo-bench fleet-learn`` and its tests.

Every device holds a slice of one shared task (the fleet's common reply style: a dash list
and one sign-off, ``reply-style`` from one seed) and its own private task (its user's
facts, ``personal-facts`` from its own seed). The shared task's held-out split is common to
all devices; each private task has its own held-out split. The data is agent/bench/tasks',
tokenized the trainer's way (agent/bench/learn_data.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.bench.learn_data import task_data
from agent.bench.tasks import make_task
from agent.core import zo
from agent.federated.client_app import DeviceLearner
from agent.federated.replay import GlobalAdapter
from agent.training.data import BatchStream, Example
from agent.training.evaluate import heldout_losses

SHARED_TASK = "reply-style"
PRIVATE_TASK = "personal-facts"


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
               private_size: int = 8, heldout_size: int = 8) -> list[DeviceData]:
    """``devices`` devices' data: a slice of the shared task each, plus private facts."""
    def tokenized(name: str, task_seed: int, train: int) -> Any:
        task = make_task(name, task_seed, train_size=train, heldout_size=heldout_size)
        return task_data(task, bundle.tokenizer, max_length=bundle.max_length,
                         pad_id=bundle.pad_id)

    shared = tokenized(SHARED_TASK, seed, shared_per_device * devices)
    out = []
    for d in range(devices):
        private = tokenized(PRIVATE_TASK, seed + 1 + d, private_size)
        out.append(DeviceData(d + 1, tuple(shared.train[d::devices]) + private.train,
                              shared.heldout, private.heldout))
    return out


def learner(data: DeviceData, bundle: Bundle, program: zo.LossFn, *,
            seed: int = 0) -> DeviceLearner:
    """A device at round 0: the bundle's initial adapter, no personal delta."""
    stream = BatchStream(data.train, program.batch, seed + data.node_id)
    init = torch.from_numpy(bundle.init_b.copy())
    return DeviceLearner(bundle_id=bundle.bundle_id, program=program,
                         batch_at=stream.batch_at, examples=len(data.train),
                         salt=data.node_id, glob=GlobalAdapter(init.clone()),
                         personal=torch.zeros_like(init))


def losses(program: zo.LossFn, examples: Sequence[Example], adapters: Sequence[torch.Tensor],
           pad_id: int) -> list[float]:
    """Held-out loss of each adapter on ``examples`` (the trainer's token-weighted mean)."""
    return heldout_losses(program, examples, [a.detach() for a in adapters], pad_id=pad_id)

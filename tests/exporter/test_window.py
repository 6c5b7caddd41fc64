"""A bundle exported with a narrow loss window (``--max-targets``), through the real runtime.

The export probes the windowed program against transformers before writing the bundle; these
tests check what a consumer sees: the window in the manifest, the same losses as the eager
model (also for rows with more targets than the window: both keep the first K), the count of
dropped targets, and that a train-only bundle refuses to serve with a clear reason.
"""

from __future__ import annotations

import pytest
import torch

from agent.core.bundle import read_manifest
from agent.errors import BundleError
from agent.io.runtime import InferProgram, TrainProgram
from exporter.reference import EagerTrainProgram


def test_manifest_records_the_window_and_no_infer_program(windowed_bundle):
    m = read_manifest(windowed_bundle)
    assert m.train.max_targets == 6 and m.infer is None
    assert not (windowed_bundle / "infer.pte").exists()


def test_windowed_program_equals_eager_and_counts_dropped_targets(windowed_bundle):
    m = read_manifest(windowed_bundle)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, m.model.vocab_size, (2, 16), generator=gen)
    mask = torch.zeros(2, 16)
    mask[0, 11:] = 1  # 5 targets: inside the window
    mask[1, 4:] = 1  # 12 targets: the first 6 count
    lora_b = torch.randn(2, m.lora.num_params, generator=gen) * 0.05
    prog = TrainProgram(windowed_bundle, slices=2, batch=2)
    got = prog.losses(tokens, mask, lora_b)
    want = EagerTrainProgram(windowed_bundle, slices=2, batch=2).losses(tokens, mask, lora_b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert prog.dropped_targets == 6


def test_train_only_bundle_refuses_to_serve(windowed_bundle):
    with pytest.raises(BundleError, match="train-only"):
        InferProgram(windowed_bundle)

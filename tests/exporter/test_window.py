"""A bundle exported with a narrow loss window (``--max-targets``), through the real runtime.

The export probes the windowed program against transformers before writing the bundle; these
tests check what a consumer sees: the window in the manifest, the same losses as the eager
model (also for rows with more targets than the window: both keep the first K), the count of
dropped targets, that a train-only bundle refuses to serve with a clear reason, and that the
benchmark's own programs (``--bench-forward``) compute what the train method computes.
"""

from __future__ import annotations

import pytest
import torch

from agent.errors import BundleError
from agent.io.bundle_files import read_manifest
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


def test_bench_programs_equal_the_train_method(windowed_bundle):
    """``mobizo-bench zo``'s programs compute the loss a train slice computes: the t_fwd
    forwards with one adapter for all 2q·b rows (unmerged, as serving runs it) and with no
    LoRA (B = 0), and the S = 1 methods alone in bench_infer.pte."""
    from executorch.runtime import Runtime

    from agent.core.targets import target_window
    from exporter.export import (
        BENCH_FORWARD_PROGRAM,
        BENCH_INFER_PROGRAM,
        adapter_forward_method_name,
        forward_method_name,
    )

    m = read_manifest(windowed_bundle)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, m.model.vocab_size, (2, 16), generator=gen)
    mask = torch.zeros(2, 16)
    mask[:, 10:] = 1
    row = torch.randn(1, m.lora.num_params, generator=gen) * 0.05
    zero = torch.zeros_like(row)
    train = TrainProgram(windowed_bundle, slices=2, batch=2)
    want = train.losses(tokens, mask, torch.cat([row, zero]))

    def run(program, method, toks, msk, b):
        w = target_window(msk, m.train.max_targets)
        loaded = Runtime.get().load_program(windowed_bundle / program)
        return loaded.load_method(method).execute([toks, w.positions, w.weights, b])[0]

    rows = 4  # 2 slices x batch 2
    with_adapter = run(BENCH_FORWARD_PROGRAM, adapter_forward_method_name(rows),
                       tokens.repeat(2, 1), mask.repeat(2, 1), row)
    torch.testing.assert_close(with_adapter[0], want[0], rtol=1e-5, atol=1e-5)
    alone = TrainProgram(windowed_bundle, slices=1, batch=2, program_file=BENCH_INFER_PROGRAM)
    torch.testing.assert_close(alone.losses(tokens, mask, row)[0], want[0], rtol=1e-5, atol=1e-5)
    merged = run(BENCH_FORWARD_PROGRAM, forward_method_name(rows), tokens[:1], mask[:1], zero)
    first_only = train.losses(tokens[:1].repeat(2, 1), mask[:1].repeat(2, 1),
                              torch.zeros(2, row.shape[1]))
    torch.testing.assert_close(merged[0], first_only[0], rtol=1e-5, atol=1e-5)

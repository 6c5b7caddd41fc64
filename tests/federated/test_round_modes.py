"""A round's pool directions give the same accumulator in every ``[training] mode``.

The estimator is the same maths in ``mezo`` (2q one-slice calls), ``prge`` (two q-slice
calls) and ``prge-dual`` (one 2q-slice call); only how the losses are batched differs. On the
real starter bundle's ExecuTorch programs (S = 1, 2 and 4) the three modes give the same
per-seed accumulators and the same B up to the programs' float rounding, as the local P-RGE
steps do (tests/unit/test_zo.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.core import zo
from agent.federated.local import RoundSettings, pool_estimate, run_local_round
from agent.federated.pool import SeedPool

pytestmark = [pytest.mark.runtime]

Q, BATCH = 2, 2


def _programs(bundle: Path) -> dict[zo.Mode, zo.LossFn]:
    from agent.training.programs import load_program

    return {mode: load_program(bundle, "executorch", zo.slices_needed(mode, Q), BATCH)
            for mode in zo.MODES}


def test_every_mode_gives_the_same_accumulator_on_the_starter_bundle(
        starter_bundle: Path) -> None:
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.bundle_files import read_manifest

    manifest = read_manifest(starter_bundle)
    validator = AdapterValidator(starter_bundle, manifest)
    b0 = torch.from_numpy(validator.load_flat_b(validator.initial_dir).astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    length = manifest.train.max_length
    tokens = torch.randint(0, manifest.model.vocab_size, (BATCH, length), generator=gen)
    mask = torch.ones(BATCH, length)
    pool = SeedPool(base=4242, size=32)
    settings = {m: RoundSettings(steps=3, q=Q, lr=1e-2, eps=1e-2, clip=50.0, mode=m)
                for m in zo.MODES}
    rounds = {m: run_local_round(fn, b0, lambda t: (tokens, mask), pool, settings[m],
                                 device_salt=9)
              for m, fn in _programs(starter_bundle).items()}
    ref = rounds["prge"]
    for mode, out in rounds.items():
        assert out.accumulator.sparse(50.0).indices == ref.accumulator.sparse(50.0).indices
        got = np.array(out.accumulator.sparse(50.0).values)
        want = np.array(ref.accumulator.sparse(50.0).values)
        assert np.allclose(got, want, rtol=1e-3, atol=1e-3), (mode, got, want)
        assert torch.allclose(out.lora_b, ref.lora_b, rtol=0, atol=1e-5), mode
        assert out.forwards == ref.forwards  # 2q sequences per step in every mode
    assert float(ref.accumulator.sparse(50.0).values[0]) != 0.0  # the steps did move B


def test_a_program_with_too_few_slices_for_the_mode_is_refused() -> None:
    fn = zo.AnalyticLoss(lambda b: (b ** 2).sum(), slices=2, batch=1)
    zs = torch.randn(2, 8)
    stack = torch.empty(2, 8)
    tokens, mask = torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4)
    with pytest.raises(ValueError, match="prge-dual with q=2 needs 4 slices"):
        pool_estimate(fn, "prge-dual", torch.zeros(8), tokens, mask, zs, 1e-2, stack)
    plus, minus = pool_estimate(fn, "mezo", torch.zeros(8), tokens, mask, zs, 1e-2, stack)
    want = [float((1e-2 * z).pow(2).sum()) for z in zs]
    assert np.allclose(plus, want) and np.allclose(minus, want)

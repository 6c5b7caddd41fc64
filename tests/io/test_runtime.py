"""agent.io.runtime against the real ExecuTorch runtime and a real (starter) bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.errors import BundleError
from agent.io.bundle_files import read_manifest
from agent.io.runtime import InferProgram, TrainProgram

pytestmark = pytest.mark.runtime


def test_unknown_shape_names_available_ones(starter_bundle):
    with pytest.raises(BundleError, match=r"slices=8, batch=2.*\(slices=1, batch=2\).*"
                                          r"re-export with --slices/--batch"):
        TrainProgram(starter_bundle, slices=8, batch=2)


def test_bad_inputs_are_rejected(starter_bundle):
    prog = TrainProgram(starter_bundle, slices=2, batch=2)
    p = read_manifest(starter_bundle).lora.num_params
    ok_tokens, ok_mask = torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8)
    with pytest.raises(ValueError, match="lora_b"):
        prog.losses(ok_tokens, ok_mask, torch.zeros(3, p))
    with pytest.raises(ValueError, match="max_length"):
        prog.losses(torch.zeros(2, 65, dtype=torch.long), torch.ones(2, 65), torch.zeros(2, p))
    assert prog.losses(ok_tokens, ok_mask, torch.zeros(2, p)).shape == (2,)


def test_identical_slices_give_identical_losses(starter_bundle):
    prog = TrainProgram(starter_bundle, slices=4, batch=2)
    p = read_manifest(starter_bundle).lora.num_params
    row = torch.randn(1, p) * 0.02
    tokens = torch.randint(0, 256, (2, 64))
    losses = prog.losses(tokens, torch.ones(2, 64), row.repeat(4, 1))
    assert torch.allclose(losses, losses[0].expand(4), atol=1e-6)
    single = TrainProgram(starter_bundle, slices=1, batch=2).losses(tokens, torch.ones(2, 64), row)
    torch.testing.assert_close(losses[:1], single, atol=1e-5, rtol=1e-6)


def test_context_overflow_is_an_error(starter_bundle):
    prog = InferProgram(starter_bundle)
    zero = np.zeros(read_manifest(starter_bundle).lora.num_params, np.float32)
    with pytest.raises(ValueError, match="do not fit the context"):
        prog.forward([1, 2, 3], prog.max_context - 2, zero)
    assert prog.forward([1, 2], prog.max_context - 2, zero).shape == (prog.vocab_size,)


def test_a_bad_program_or_method_is_a_bundle_error(starter_bundle, tmp_path):
    manifest = read_manifest(starter_bundle)
    for part in starter_bundle.iterdir():  # the bundle, but its infer.pte is garbage
        if part.name != manifest.infer.program:
            (tmp_path / part.name).symlink_to(part)
    (tmp_path / manifest.infer.program).write_bytes(b"not a program" * 16)
    with pytest.raises(BundleError, match=r"ExecuTorch cannot load .*infer\.pte .*re-export"):
        InferProgram(tmp_path)
    train = manifest.train.model_copy(update={"head_method": "no_such_head"})
    with pytest.raises(BundleError, match=r"cannot load the methods .*, no_such_head of .*"
                                          r"\('no_such_head'\)"):
        TrainProgram(starter_bundle, slices=1, batch=2,
                     manifest=manifest.model_copy(update={"train": train}))


# A process that only loads and runs programs pays neither executorch.runtime's imports (exir,
# sympy, torchao: ~135 MB resident, agent/io/pybindings.py) nor transformers.
_LOAD_ONLY = """
import sys
from pathlib import Path
import numpy as np
from agent.io import xnnpack_options
from agent.io.runtime import InferProgram, TrainProgram, size_thread_pool
size_thread_pool(1)
infer = InferProgram(Path(sys.argv[1]))
infer.forward([1, 2, 3], 0, np.zeros(infer.num_params, np.float32))
TrainProgram(Path(sys.argv[1]), slices=1, batch=2)
heavy = ("executorch.runtime", "executorch.exir", "sympy", "torchao", "transformers")
print([m for m in heavy if m in sys.modules], xnnpack_options.weight_cache_enabled())
"""


def test_loading_programs_imports_only_the_runtime_extension(starter_bundle):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's agent, not an installed one
    done = subprocess.run([sys.executable, "-c", _LOAD_ONLY, str(starter_bundle)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[] True"


def test_long_prefill_and_decode_give_the_same_logits_and_greedy_ids(starter_bundle):
    """Chunks and tokens deep in the context go through ``prefill_long`` / ``decode_long``
    (the masked form: XNNPACK's matmuls over the whole cache) instead of custom_sdpa, whose
    cost grows with the context. All write the one KV cache; turn by turn the logits agree to
    float rounding and greedy picks are the same, whichever method fed which position."""
    assert {"prefill_long", "decode_long"} <= set(read_manifest(starter_bundle).infer.methods)
    rng = np.random.default_rng(5)
    b = (rng.standard_normal(read_manifest(starter_bundle).lora.num_params) * 0.02
         ).astype(np.float32)
    prompt = [int(t) for t in rng.integers(3, 250, 70)]  # 5 chunks of 16: long from 32 on
    runs = []
    # (prefill, decode) long from: never; chunks from 32 and tokens from 75 (mid-reply);
    # everything
    for prefill_from, decode_from in ((10**9, 10**9), (32, 75), (0, 0)):
        prog = InferProgram(starter_bundle, long_prefill_from=prefill_from,
                            long_decode_from=decode_from)
        logits = prog.forward(prompt, 0, b)
        picks, steps = [], [logits]
        for i in range(12):
            picks.append(int(np.argmax(logits)))
            logits = prog.forward([picks[-1]], len(prompt) + i, b)
            steps.append(logits)
        # a follow-up turn fed past the first 70 positions (a prompt-cache hit's suffix)
        steps.append(prog.forward(prompt[:20], len(prompt) + 12, b))
        runs.append((picks, steps))
        del prog
    base_picks, base_steps = runs[0]
    for picks, steps in runs[1:]:
        assert picks == base_picks
        for a, c in zip(base_steps, steps, strict=True):
            np.testing.assert_allclose(c, a, rtol=0, atol=2e-4)


def test_a_bundle_without_the_masked_decode_is_served_with_custom_sdpa(starter_bundle,
                                                                      tmp_path):
    """A bundle exported before ``decode_long`` existed (its manifest lists prefill, decode and
    prefill_long) loads and decodes every position through ``decode``, whatever the
    threshold: the same logits as the full program with the masked decode turned off."""
    import json
    import shutil

    older = tmp_path / "older"
    shutil.copytree(starter_bundle, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["infer"]["methods"] = ["prefill", "decode", "prefill_long"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    b = np.zeros(read_manifest(starter_bundle).lora.num_params, dtype=np.float32)
    prompt = list(range(3, 40))
    got = InferProgram(older, long_decode_from=0)
    want = InferProgram(starter_bundle, long_decode_from=10**9)
    assert got._decode_long is None
    np.testing.assert_array_equal(got.forward(prompt, 0, b), want.forward(prompt, 0, b))
    for i in range(3):  # decoded tokens
        pos = len(prompt) + i
        np.testing.assert_array_equal(got.forward([7 + i], pos, b), want.forward([7 + i], pos, b))


def test_the_masked_forms_start_at_a_share_of_the_bundles_context(starter_bundle):
    """Where custom_sdpa and the masked form cross scales with the cache (the masked form
    attends over all of it): 320 and 704 of 1024 tokens, the same shares of any context."""
    prog = InferProgram(starter_bundle)
    ctx = read_manifest(starter_bundle).infer.max_context
    assert prog.long_prefill_from == round(ctx * 320 / 1024)
    assert prog.long_decode_from == round(ctx * 704 / 1024)

"""The trainer on the real starter bundle through the ExecuTorch runtime (train.pte).

(a) P-RGE (outer, dual) against sequential MeZO give the same g_i through ExecuTorch;
(c) ExecuTorch steps equal eager-reference steps; (d) a learnable task lowers held-out loss
clearly; (e) an interrupted run resumed from its checkpoint ends with the same adapter as an
uninterrupted one — in-process, and (slow) with a real SIGTERM to a real `mobizo-agent train`
process.

Tuning found for the random-weight starter model (recorded in the report): lr 5e-3 … 1e-2
with ε = 1e-2 — 50–100× the paper's lr, which is tuned for pretrained models; ε = 1e-1 and
lr ≥ 3e-2 learn worse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.core import zo
from agent.core.train_job import TrainJob
from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.training.programs import load_program
from agent.training.result import EXIT_INTERRUPTED
from agent.training.sample_data import constant_response_rows, write_jsonl
from agent.training.trainer import run_training

pytestmark = pytest.mark.runtime

LEARN_LR = 1e-2
LEARN_EPS = 1e-2


def _dual_shape(bundle: Path) -> tuple[int, int]:
    """(q, b) of the biggest exported dual shape: the one every mode can run on."""
    shapes = read_manifest(bundle).train.shapes
    best = max((s for s in shapes if s.slices >= 2), key=lambda s: (s.slices, -s.batch))
    return best.slices // 2, best.batch


def _fit(bundle: Path, need: int, batch: int) -> tuple[int, int]:
    """The smallest exported (slices, batch) with at least ``need`` slices."""
    shapes = read_manifest(bundle).train.shapes
    s = min((s for s in shapes if s.batch == batch and s.slices >= need), key=lambda s: s.slices)
    return s.slices, s.batch


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "ok.jsonl",
                       constant_response_rows(120, "ok!"))


def _batch(bundle: Path, data: Path, b: int):
    from agent.training.data import BatchStream, load_dataset
    from agent.training.tokenize import load_tokenizer

    m = read_manifest(bundle)
    ds = load_dataset(data, load_tokenizer(bundle), max_length=m.train.max_length,
                      pad_id=m.tokenizer.pad_token_id, heldout_share=0.0)
    return BatchStream(ds.train, b, 0).batch_at(0)


def test_modes_agree_through_executorch(starter_bundle, learn_data):
    q, b = _dual_shape(starter_bundle)
    tokens, mask = _batch(starter_bundle, learn_data, b)
    p = AdapterValidator(starter_bundle).layout.num_params
    start = torch.randn(p, generator=torch.Generator().manual_seed(0)) * 1e-2
    grads = {}
    for mode in zo.MODES:
        slices, batch = _fit(starter_bundle, zo.slices_needed(mode, q), b)
        prog = load_program(starter_bundle, "executorch", slices, batch)
        est = zo.estimate(prog, mode, start, tokens, mask, seed_t=zo.step_seed(1, 0), q=q,
                          eps=1e-2)
        grads[mode] = np.array(est.projected_grads)
        del prog
    scale = max(1.0, float(np.abs(grads["mezo"]).max()))
    for mode in ("prge", "prge-dual"):
        np.testing.assert_allclose(grads[mode], grads["mezo"], atol=1e-4 * scale, rtol=1e-5)


def test_executorch_steps_equal_eager(starter_bundle, learn_data):
    q, b = _dual_shape(starter_bundle)
    tokens, mask = _batch(starter_bundle, learn_data, b)
    p = AdapterValidator(starter_bundle).layout.num_params
    out = {}
    for backend in ("executorch", "eager"):
        prog = load_program(starter_bundle, backend, 2 * q, b)
        lora_b = torch.zeros(p)
        gs = []
        for t in range(3):
            res = zo.zo_step(prog, "prge-dual", lora_b, tokens, mask, run_seed=3, step=t, q=q,
                             eps=1e-2, lr=LEARN_LR)
            lora_b = res.lora_b
            gs.append(res.projected_grads)
        out[backend] = (np.array(gs), lora_b.numpy(), res.estimate.loss)
    et, eager = out["executorch"], out["eager"]
    assert et[2] == pytest.approx(eager[2], abs=1e-4)
    np.testing.assert_allclose(et[0], eager[0], atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(et[1], eager[1], atol=1e-5)


def _cfg(bundle: Path, data: Path, out: Path, **kw) -> TrainJob:
    q, b = _dual_shape(bundle)
    base = dict(bundle=bundle, data=data, out=out, steps=30, mode="prge-dual", q=q, batch=b,
                seed=0, lr=LEARN_LR, eps=LEARN_EPS, heldout_share=0.1, checkpoint_every=5)
    base.update(kw)
    return TrainJob(**base)


def test_learnable_task_lowers_heldout_loss(starter_bundle, learn_data, tmp_path):
    res = run_training(_cfg(starter_bundle, learn_data, tmp_path / "adapter", steps=40))
    assert res.status == "completed"
    assert res.heldout_final < res.heldout_start - 0.5, (res.heldout_start, res.heldout_final)
    # the eval entry point (the daemon's gate) sees the same improvement
    from agent.training.evaluate import evaluate_adapters

    report = evaluate_adapters(starter_bundle, learn_data,
                               [starter_bundle / "adapter", res.adapter_dir])
    before, after = report["losses"].values()
    assert before == pytest.approx(res.heldout_start, abs=1e-4)
    assert after == pytest.approx(res.heldout_final, abs=1e-4)


def test_interrupted_then_resumed_equals_uninterrupted(starter_bundle, learn_data, tmp_path):
    """(e) in-process: stop after step 4 (the daemon's should_stop), resume, compare."""
    full = run_training(_cfg(starter_bundle, learn_data, tmp_path / "full", steps=10,
                             evaluate=False))
    want = AdapterValidator(starter_bundle).load_flat_b(full.adapter_dir)
    cfg = _cfg(starter_bundle, learn_data, tmp_path / "part", steps=10, evaluate=False,
               checkpoint_every=3)
    seen: list[int] = []
    first = run_training(cfg, on_step=lambda m: seen.append(m["step"]),
                         should_stop=lambda: len(seen) >= 4)
    assert first.status == "interrupted" and first.end_step == 4
    second = run_training(cfg.model_copy(update={"resume": True}))
    assert (second.start_step, second.end_step) == (4, 10)
    got = AdapterValidator(starter_bundle).load_flat_b(second.adapter_dir)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def _cli(bundle: Path, data: Path, out: Path, *extra: str) -> list[str]:
    q, b = _dual_shape(bundle)
    return [sys.executable, "-m", "agent", "train", "--bundle", str(bundle), "--data",
            str(data), "--out", str(out), "--steps", "12", "--q", str(q), "--batch", str(b),
            "--lr", str(LEARN_LR), "--checkpoint-every", "100", "--no-eval", *extra]


@pytest.mark.slow  # three processes, each importing executorch (~40 s on 2 busy cores)
def test_sigterm_then_resume_equals_uninterrupted(starter_bundle, learn_data, tmp_path):
    full = run_training(_cfg(starter_bundle, learn_data, tmp_path / "full", steps=12,
                             evaluate=False))
    want = AdapterValidator(starter_bundle).load_flat_b(full.adapter_dir)

    out = tmp_path / "cli"
    proc = subprocess.Popen(_cli(starter_bundle, learn_data, out), stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    steps = []
    for line in proc.stdout:
        msg = json.loads(line)
        if "step" in msg:
            steps.append(msg)
            assert {"loss", "projected_grads", "lr", "seconds"} <= set(msg)
            if msg["step"] == 3:
                proc.send_signal(signal.SIGTERM)
        else:
            result = msg["result"]
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED
    assert result["status"] == "interrupted" and 3 <= result["end_step"] < 12
    assert not out.exists()

    done = subprocess.run(_cli(starter_bundle, learn_data, out, "--resume"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])["result"]
    assert last["start_step"] == result["end_step"] and last["end_step"] == 12
    got = AdapterValidator(starter_bundle).load_flat_b(out)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)

"""The training recipe's mechanics on a tiny bundle and an analytic, token-dependent loss.

These check the loop, stopping, checkpoint/resume and the errors raised before any work,
in milliseconds. The same properties through the real ExecuTorch program on the starter
bundle are in test_trainer_runtime.py.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from agent.core.train_job import TrainJob
from agent.errors import BundleError, DataError, TrainingError
from agent.io.adapter_fs import AdapterValidator
from agent.io.bundle_files import read_manifest
from agent.training.result import EXIT_INTERRUPTED, METRICS_NAME
from agent.training.trainer import ZOTrainRecipe, run_training
from tests.io.tiny_bundle import make_bundle


class TokenQuadratic:
    """loss = mean over target tokens of (B[token mod P] − 0.3)²: learnable from the data."""

    def __init__(self, bundle: Path, slices: int, batch: int, threads: int | None) -> None:
        self.slices, self.batch = slices, batch
        self.max_length = read_manifest(bundle).train.max_length
        self.calls = 0

    def losses(self, tokens, loss_mask, lora_b):
        assert tokens.shape == (self.batch, self.max_length) and lora_b.shape[0] == self.slices
        self.calls += 1
        idx = tokens % lora_b.shape[1]
        m = loss_mask.double()
        vals = (lora_b.double()[:, idx] - 0.3) ** 2  # [S, b, T]
        return ((vals * m).sum(dim=(1, 2)) / m.sum()).float()


class Factory:
    def __init__(self) -> None:
        self.made: list[TokenQuadratic] = []

    def __call__(self, bundle, slices, batch, threads):
        fn = TokenQuadratic(bundle, slices, batch, threads)
        self.made.append(fn)
        return fn


@pytest.fixture
def tiny(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    rows = [{"prompt": f"q{i}", "response": "ok"} for i in range(30)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return bundle, data


def _cfg(tmp_path: Path, bundle: Path, data: Path | None = None, **kw) -> TrainJob:
    base = dict(bundle=bundle, data=data, out=tmp_path / "adapter", steps=20, mode="prge",
                q=2, batch=1, seed=5, lr=0.5, eps=1e-2, checkpoint_every=4, heldout_share=0.2,
                metrics=tmp_path / "metrics.jsonl")
    base.update(kw)
    return TrainJob(**base)


def _run(cfg, tokenizer, **kw):
    return run_training(cfg, program_factory=Factory(), tokenizer=tokenizer, **kw)


def test_completed_run_writes_adapter_and_metrics(tmp_path, tiny, byte_tokenizer):
    bundle, data = tiny
    res = _run(_cfg(tmp_path, bundle, data), byte_tokenizer)
    assert res.status == "completed" and res.exit_code == 0 and res.end_step == 20
    assert res.heldout_final < 0.5 * res.heldout_start
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 21))
    for m in lines:
        assert {"step", "loss", "projected_grads", "lr", "seconds"} <= set(m)
        assert len(m["projected_grads"]) == 2
    out = tmp_path / "adapter"
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / METRICS_NAME).read_text())["steps"] == 20
    flat = AdapterValidator(bundle).load_flat_b(out)  # A equals the bundle's, B finite
    assert np.abs(flat).max() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]


@pytest.mark.parametrize("how", ["should_stop", "sigterm", "burst"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny, byte_tokenizer, how):
    bundle, data = tiny
    full = _run(_cfg(tmp_path / "a", bundle, data, checkpoint_every=3), byte_tokenizer)
    want = AdapterValidator(bundle).load_flat_b(full.adapter_dir)

    cfg = _cfg(tmp_path / "b", bundle, data, checkpoint_every=3)
    kw: dict = {}
    if how == "should_stop":
        seen: list[int] = []
        kw["on_step"] = lambda m: seen.append(m["step"])
        kw["should_stop"] = lambda: len(seen) >= 7
    elif how == "sigterm":
        kw["on_step"] = lambda m: m["step"] == 7 and os.kill(os.getpid(), signal.SIGTERM)
    else:
        cfg = cfg.model_copy(update={"burst_steps": 7})
    first = _run(cfg, byte_tokenizer, **kw)
    assert first.end_step == 7
    if how == "burst":
        assert first.status == "burst_done" and first.exit_code == 0
    else:
        assert first.status == "interrupted" and first.exit_code == EXIT_INTERRUPTED
        assert first.adapter_dir is None and not cfg.out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    second = _run(cfg.model_copy(update={"resume": True, "burst_steps": None}), byte_tokenizer)
    assert second.start_step == 7 and second.end_step == 20 and second.status == "completed"
    got = AdapterValidator(bundle).load_flat_b(second.adapter_dir)
    assert np.array_equal(got, want)


def test_max_seconds_ends_with_adapter(tmp_path, tiny, byte_tokenizer):
    bundle, data = tiny
    ticks = iter(range(1000))
    res = _run(_cfg(tmp_path, bundle, data, max_seconds=5), byte_tokenizer,
               clock=lambda: float(next(ticks)))
    assert res.status == "time_budget" and 0 < res.end_step < 20 and res.adapter_dir


def test_resume_with_other_settings_is_refused(tmp_path, tiny, byte_tokenizer):
    bundle, data = tiny
    _run(_cfg(tmp_path, bundle, data, burst_steps=3), byte_tokenizer)
    with pytest.raises(TrainingError, match="different settings"):
        _run(_cfg(tmp_path, bundle, data, lr=0.1, resume=True), byte_tokenizer)


def test_init_adapter_is_the_starting_point(tmp_path, tiny, byte_tokenizer):
    from agent.io.adapter_fs import write_adapter

    bundle, data = tiny
    v = AdapterValidator(bundle)
    init = tmp_path / "init"
    write_adapter(init, v.layout, np.full(v.layout.num_params, 0.3, np.float32), v.a_tensors)
    res = _run(_cfg(tmp_path, bundle, data, init_adapter=init, steps=1), byte_tokenizer)
    assert res.heldout_start == pytest.approx(0.0, abs=1e-10)


def test_errors_before_any_work(tmp_path, tiny, byte_tokenizer):
    bundle, data = tiny
    factory = Factory()

    def setup(**kw):
        kw.setdefault("data", data)
        ZOTrainRecipe(_cfg(tmp_path, bundle, **kw), program_factory=factory,
                      tokenizer=byte_tokenizer).setup()

    with pytest.raises(TrainingError, match=r"needs a 8x1 .* exports only 2x1"):
        setup(mode="prge-dual", q=4)
    with pytest.raises(TrainingError, match="needs a 2x3"):
        setup(batch=3)
    with pytest.raises(TrainingError, match="beyond the bundle's exported length 16"):
        setup(max_length=64)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "x", "response": "y", "feedback": "down"}\n')
    with pytest.raises(DataError, match="no usable training examples"):
        setup(data=empty)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 99"):
        setup()
    assert factory.made == []  # no program was loaded for any of these


def test_smaller_q_runs_on_a_bigger_method(tmp_path, tiny, byte_tokenizer, caplog):
    bundle, data = tiny
    factory = Factory()
    res = run_training(_cfg(tmp_path, bundle, data, mode="mezo", q=2, steps=3),
                       program_factory=factory, tokenizer=byte_tokenizer)
    assert res.status == "completed"
    assert factory.made[0].slices == 2 and "wasted" in caplog.text

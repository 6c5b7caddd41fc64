"""``[training] total_steps`` and ``[device] threads`` take effect in the trainer child.

The lr schedule runs across the daemon's runs: a run that starts ``schedule_offset`` steps
into the schedule takes the lr a single long run would have had there. ``[device] threads``
reaches the job, and the trainer sizes the ExecuTorch pool from it (a real trainer process
on the starter bundle reports the size it got).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core import zo
from agent.core.train_job import TrainJob
from agent.errors import TrainingError
from agent.services.daemon.children import train_job
from agent.training.sample_data import constant_response_rows
from tests.io.tiny_bundle import make_bundle
from tests.training.test_recipe import _cfg, _run
from tests.training.test_train_job import _daemon_side

SCHEDULE = dict(lr_schedule="cosine", warmup_steps=2, min_lr_ratio=0.1, schedule_steps=20)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    bundle = make_bundle(tmp_path / "bundle")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "ok"}) + "\n"
                            for i in range(30)))
    return bundle, data


def _lrs(metrics: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in metrics.read_text().splitlines()]


def test_a_later_run_continues_the_schedule_where_the_earlier_ones_left_it(
        tmp_path: Path, tiny, byte_tokenizer) -> None:
    bundle, data = tiny
    whole = _cfg(tmp_path, bundle, data, steps=10, metrics=tmp_path / "whole.jsonl",
                 out=tmp_path / "whole", **SCHEDULE)
    _run(whole, byte_tokenizer)
    first = _cfg(tmp_path, bundle, data, steps=5, metrics=tmp_path / "first.jsonl",
                 out=tmp_path / "first", **SCHEDULE)
    _run(first, byte_tokenizer)
    second = _cfg(tmp_path, bundle, data, steps=5, schedule_offset=5,
                  metrics=tmp_path / "second.jsonl", out=tmp_path / "second", **SCHEDULE)
    _run(second, byte_tokenizer)
    lrs = _lrs(tmp_path / "second.jsonl")
    expected = zo.learning_rate(5, base_lr=0.5, total_steps=20, schedule="cosine",
                                warmup_steps=2, min_lr_ratio=0.1)
    assert lrs[0] == pytest.approx(expected)
    # the two runs together walk the schedule a single 10-step run walks
    assert _lrs(tmp_path / "first.jsonl") + lrs == pytest.approx(_lrs(tmp_path / "whole.jsonl"))
    assert lrs[0] < 0.5  # past the warm-up, on the decay: not restarted at step 0


def test_the_offset_is_part_of_the_run_identity(tmp_path: Path, tiny, byte_tokenizer) -> None:
    bundle, data = tiny
    job = _cfg(tmp_path, bundle, data, steps=6, schedule_offset=4, checkpoint_every=2,
               **SCHEDULE)
    assert job.run_identity()["schedule_offset"] == 4
    assert "schedule_offset" not in job.model_copy(update={"schedule_offset": 0}).run_identity()
    _run(job.model_copy(update={"burst_steps": 2}), byte_tokenizer)  # a first burst
    resumed = _run(job.model_copy(update={"resume": True}), byte_tokenizer)
    assert resumed.start_step == 2  # same offset: the checkpoint resumes
    # another offset is another trajectory: its checkpoint does not resume
    with pytest.raises(TrainingError, match="different settings"):
        _run(job.model_copy(update={"resume": True, "schedule_offset": 5}), byte_tokenizer)


def test_the_daemon_job_carries_the_run_offset_and_device_threads(tmp_path: Path) -> None:
    cfg, run, files = _daemon_side(tmp_path, total_steps=500)
    cfg = cfg.model_copy(update={"device": cfg.device.model_copy(update={"threads": 2})})
    run = run.model_copy(update={"schedule_offset": 120})
    job = train_job(cfg, run, files)
    assert (job.schedule_offset, job.horizon, job.threads) == (120, 500, 2)
    # every burst of the run writes the same identity, so each resumes the checkpoint
    assert train_job(cfg, run.model_copy(update={"steps_done": 3}), files).run_identity() == \
        job.run_identity()


def test_a_job_refuses_an_unbounded_offset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="schedule_offset"):
        TrainJob(bundle=tmp_path, data=tmp_path / "d", out=tmp_path / "o", schedule_offset=-1)


@pytest.mark.runtime
def test_device_threads_size_the_trainers_pool(starter_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in constant_response_rows(8, seed=1)))
    job = TrainJob(bundle=starter_bundle, data=data, out=tmp_path / "adapter", steps=1,
                   mode="mezo", q=1, batch=2, threads=1, evaluate=False, heldout_share=0.0)
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "agent", "--log-level", "WARNING", "train",
                           "--job", str(job_file), "--progress", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = next(json.loads(line)["result"] for line in proc.stdout.splitlines()
                  if line.startswith('{"result"'))
    assert result["runtime_threads"] == 1


def test_the_pool_is_sized_before_a_program_loads_and_not_after() -> None:
    script = (
        "import agent.io.runtime as rt\n"
        "print(rt.size_thread_pool(1), rt.size_thread_pool(None))\n"
        "rt._loaded = True  # as after a program load\n"
        "print(rt.size_thread_pool(3))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1", "1"]
    assert "not resizing it to 3" in proc.stderr

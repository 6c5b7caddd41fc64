"""The TrainJob document: one schema from agent.toml through the daemon to the trainer child.

The daemon writes the job (children.trainer_argv), `mobizo-agent train --job` reads it back
with the same model; `train` with flags builds the same model; a bad document names the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import build_parser, main
from agent.cli.train import job_from_args
from agent.config import AgentConfig
from agent.config.training import TrainingConfig
from agent.core.train_job import TrainJob
from agent.errors import ConfigError
from agent.services.daemon.children import train_job, trainer_argv
from agent.services.daemon.run_files import RunFiles
from agent.services.daemon.runstate import RunState
from agent.training.job import read_train_job


def _daemon_side(tmp_path: Path, **training: object) -> tuple[AgentConfig, RunState, RunFiles]:
    cfg = AgentConfig.model_validate({
        "paths": {"state_dir": str(tmp_path / "state")},
        "training": {"mode": "prge", "q": 2, "batch": 2, "steps_per_burst": 6, **training},
    })
    run = RunState(run_id="r1", seed=1234, init_adapter=str(tmp_path / "init"),
                   init_version="initial", cursor=0, created_at=0.0)
    files = RunFiles(tmp_path / "state", tmp_path / "state" / "checkpoints")
    return cfg, run, files


def _parse(argv: list[str]) -> object:
    parser, _ = build_parser(argv)
    return parser.parse_args(argv)


def test_the_daemon_written_job_reaches_the_trainer_unchanged(tmp_path: Path) -> None:
    cfg, run, files = _daemon_side(tmp_path, total_steps=777, lr_schedule="cosine",
                                   warmup_steps=20, lr=3e-4)
    argv = trainer_argv(cfg, run, files, "/usr/bin/python3")
    assert argv[:5] == ["/usr/bin/python3", "-m", "agent", "train", "--job"]
    job_file = Path(argv[5])
    assert job_file.parent == files.run_dir
    read = job_from_args(_parse(argv[3:]))  # what the child does with its own argv
    assert read == train_job(cfg, run, files)
    assert read.model_dump() == TrainJob.model_validate_json(job_file.read_text()).model_dump()
    # total_steps is the schedule's horizon; a run is still steps_per_burst long
    assert (read.schedule_steps, read.horizon, read.steps) == (777, 777, 6)
    assert (read.seed, read.lr, read.lr_schedule, read.warmup_steps) == (1234, 3e-4, "cosine", 20)
    assert read.resume and not read.evaluate and read.metrics == files.metrics_path


def test_flags_build_the_same_model_with_its_own_defaults(tmp_path: Path) -> None:
    args = _parse(["train", "--bundle", "b", "--data", "d.jsonl", "--out", "o", "--q", "2"])
    job = job_from_args(args)
    assert job == TrainJob(bundle=Path("b"), data=Path("d.jsonl"), out=Path("o"), q=2)
    assert job.lr == TrainJob.model_fields["lr"].default and job.evaluate


def test_a_malformed_job_file_names_the_field(tmp_path: Path, capsys) -> None:
    good = TrainJob(bundle=tmp_path, data=tmp_path / "d", out=tmp_path / "o")
    doc = json.loads(good.model_dump_json())
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({**doc, "lr": 5.0}))
    with pytest.raises(ConfigError, match=r"job\.json: lr: .*less than or equal to 1"):
        read_train_job(bad)
    bad.write_text(json.dumps({**doc, "lerning_rate": 0.1}))
    with pytest.raises(ConfigError, match="lerning_rate: Extra inputs are not permitted"):
        read_train_job(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid training job"):
        read_train_job(bad)
    assert main(["train", "--job", str(bad)]) == 2
    assert "invalid training job" in capsys.readouterr().err
    assert main(["train", "--job", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the training job" in capsys.readouterr().err


def test_job_and_job_flags_do_not_mix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--lr"):
        job_from_args(_parse(["train", "--job", str(tmp_path / "j.json"), "--lr", "0.1"]))


@pytest.mark.parametrize("name", ["q", "batch", "seed", "lr", "eps", "warmup_steps",
                                  "min_lr_ratio", "clip", "checkpoint_every"])
def test_bounds_agree_with_the_training_section(name: str) -> None:
    def bounds(model: type, field: str) -> dict[str, object]:
        schema = model.model_json_schema()["properties"][field]
        for option in schema.get("anyOf", [schema]):  # int | None: the int branch
            if option.get("type") != "null":
                schema = option
        return {k: schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum",
                                           "exclusiveMaximum")}

    assert bounds(TrainJob, name) == bounds(TrainingConfig, name)
    section_default = TrainingConfig.model_fields[name].default
    if name not in ("batch",):  # the section picks a board-sized batch; the job: the bundle's
        assert TrainJob.model_fields[name].default == section_default

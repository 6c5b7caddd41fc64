"""`mobizo-agent train` / `eval`: bad input fails fast with exit 2 and a message that helps.

Runs in-process on a tiny bundle (manifest + adapter + a real tokenizer); nothing here
reaches the point of loading a program. End-to-end runs on the starter bundle are in
test_trainer_runtime.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from agent.cli import main
from tests.io.tiny_bundle import make_bundle


@pytest.fixture
def tiny(tmp_path, byte_tokenizer):
    bundle = make_bundle(tmp_path / "bundle")
    shutil.rmtree(bundle / "tokenizer")
    byte_tokenizer.save_pretrained(str(bundle / "tokenizer"))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"p{i}", "response": "r"})
                              for i in range(10)) + "\n")
    return bundle, data


def _train(bundle, data, out, *extra: str) -> list[str]:
    return ["train", "--bundle", str(bundle), "--data", str(data), "--out", str(out),
            "--steps", "3", *extra]


def test_shape_not_exported(tmp_path, tiny, capsys):
    bundle, data = tiny
    rc = main(_train(bundle, data, tmp_path / "a", "--mode", "prge-dual", "--q", "4",
                     "--batch", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "8x1" in err and "exports only 2x1" in err and "re-export" in err
    assert not (tmp_path / "a").exists()


def test_bad_options_name_the_flag(tmp_path, tiny, capsys):
    bundle, data = tiny
    assert main(_train(bundle, data, tmp_path / "a", "--q", "0")) == 2
    assert "--q" in capsys.readouterr().err


def test_empty_data(tmp_path, tiny, capsys, caplog):
    bundle, _ = tiny
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    rc = main(_train(bundle, empty, tmp_path / "a", "--mode", "prge", "--q", "2",
                     "--batch", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "no usable training examples" in err and "malformed lines: 1" in err
    assert "malformed line 1" in caplog.text


def test_length_beyond_export(tmp_path, tiny, capsys):
    bundle, data = tiny
    rc = main(_train(bundle, data, tmp_path / "a", "--mode", "prge", "--q", "2", "--batch",
                     "1", "--max-length", "4096"))
    assert rc == 2 and "exported length 16" in capsys.readouterr().err


def test_eval_rejects_foreign_adapter(tmp_path, tiny, capsys):
    bundle, data = tiny
    other = make_bundle(tmp_path / "other", seed=1)
    rc = main(["eval", "--bundle", str(bundle), "--data", str(data), str(other / "adapter")])
    assert rc == 2 and "LoRA-A" in capsys.readouterr().err

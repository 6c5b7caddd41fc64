"""``mobizo-bench serve --engines inline,process``: both engines through HTTP, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent.bench import serve_engines
from agent.bench.cli import main


def test_engines_are_parsed_and_a_wrong_one_is_named() -> None:
    assert serve_engines.parse_engines("inline, process") == ("inline", "process")
    with pytest.raises(argparse.ArgumentTypeError, match="thread.*inline,process"):
        serve_engines.parse_engines("inline,thread")


@pytest.mark.runtime
def test_both_engines_are_measured_in_one_run(
    starter_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "engines.json"
    main(["serve", "--bundle", str(starter_bundle), "--engines", "inline,process",
          "--prompt-tokens", "16", "--gen-tokens", "8", "--repeats", "1", "--switches", "4",
          "--threads", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| inline |" in printed and "| process |" in printed and "target (process)" in printed
    rows = json.loads(out.read_text())["engines"]
    assert [r["engine"] for r in rows] == ["inline", "process"]
    for r in rows:
        assert r["switch"]["switches"] == 4 and r["switch"]["failed_requests"] == 0
        assert r["speeds"]["gen_tok_s"] > 0 and r["load_s"] > 0

"""``[inference] engine``: where the service's program runs, strict like every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigValidationError, load_config
from agent.services.inference.settings import ServeConfig, serve_config


def test_the_engine_runs_in_its_own_process_by_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("")
    cfg = load_config(path).config
    assert cfg.inference.engine == "process"
    assert serve_config(cfg).engine == "process" and ServeConfig().engine == "process"


def test_inline_is_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[inference]\nengine = "inline"\n')
    assert serve_config(load_config(path).config).engine == "inline"


def test_an_unknown_engine_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[inference]\nengine = "thread"\n')
    with pytest.raises(ConfigValidationError) as info:
        load_config(path)
    found = {p.path: str(p) for p in info.value.problems}
    assert set(found) == {"inference.engine"}
    assert "process" in found["inference.engine"] and "inline" in found["inference.engine"]

"""render: prefix rewriting, board drop-ins, and the never-overwrite-an-edited-config rule."""

from __future__ import annotations

from pathlib import PurePosixPath

from agent.deploy.board import BoardCaps
from agent.deploy.render import (
    decide_config,
    is_pristine,
    render_board_dropins,
    render_config,
    render_unit,
)

UNIT = (
    "ExecStart=/opt/mobizo-agent/venv/bin/mobizo-agent run\n"
    "Environment=MOBIZO_PROFILES_DIR=/opt/mobizo-agent/firmware_configs\n"
    "Documentation=file:/opt/mobizo-agent/share/x /opt/mobizo-agent-old/y /opt/mobizo-agent\n"
)


def test_prefix_rewrites_whole_path_components_only() -> None:
    out = render_unit(UNIT, PurePosixPath("/usr/local/mobizo"))
    assert "ExecStart=/usr/local/mobizo/venv/bin/mobizo-agent run" in out
    assert "MOBIZO_PROFILES_DIR=/usr/local/mobizo/firmware_configs" in out
    assert "/opt/mobizo-agent-old/y" in out  # a different directory, left alone
    assert out.rstrip().endswith("/usr/local/mobizo")
    assert render_unit(UNIT, PurePosixPath("/opt/mobizo-agent")) == UNIT


def test_board_dropins_carry_the_profile_caps() -> None:
    drops = render_board_dropins(BoardCaps("raspberry-pi-4", 1024, 1536, 19))
    assert "[Slice]\nMemoryMax=1024M" in drops["mobizo-trainer.slice"]
    assert "[Service]\nMemoryMax=1536M" in drops["mobizo-agent.service"]  # 512 + 1024
    assert "[Service]\nMemoryMax=1536M" in drops["mobizo-inference.service"]
    uncapped = render_board_dropins(BoardCaps("generic-x86_64", 0, 0, 19))
    assert all("MemoryMax=infinity" in text for text in uncapped.values())


def test_generated_config_knows_it_is_unedited() -> None:
    text = render_config("dev", "--board")
    assert is_pristine(text)
    assert 'profile = "dev"' in text
    assert not is_pristine(text.replace('profile = "dev"', 'profile = "raspberry-pi-5"'))
    assert not is_pristine("[device]\nprofile = 'dev'\n")


def test_config_decisions() -> None:
    wanted = render_config("raspberry-pi-5", "--board")
    ours_old = render_config("raspberry-pi-4", "--board")
    edited = ours_old + "\n[training]\nsteps_per_burst = 5\n"
    assert decide_config(None, None, wanted).action == "create"
    assert decide_config(wanted, None, wanted).action == "unchanged"
    assert decide_config(ours_old, None, wanted).action == "replace"
    assert decide_config(edited, None, wanted).action == "keep-write-new"
    assert decide_config(edited, wanted, wanted).action == "keep"
    assert decide_config(edited, ours_old, wanted).action == "keep-write-new"

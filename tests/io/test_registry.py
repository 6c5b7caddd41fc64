"""The adapter registry on a real filesystem, including a publish killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.core.adapters import INITIAL_VERSION, AdapterState
from agent.errors import AdapterError
from agent.io.adapter_fs import AdapterValidator
from agent.io.registry import AdapterRegistry
from tests.io.tiny_bundle import make_adapter, make_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def _registry(bundle: Path, root: Path, keep: int = 5) -> AdapterRegistry:
    return AdapterRegistry(root, validator=AdapterValidator(bundle), keep=keep)


def test_publish_activate_rollback(bundle: Path, tmp_path: Path) -> None:
    reg = _registry(bundle, tmp_path / "adapters")
    assert reg.active() is None
    assert reg.load_flat_b()[0] == INITIAL_VERSION
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1), metrics={"loss": 1.0})
    v2 = reg.publish(make_adapter(bundle, tmp_path / "a2", 0.2), parent=v1,
                     eval_result={"heldout_loss": 0.9})
    assert (v1, v2) == ("v0001", "v0002") and reg.active() == v2
    version, flat = reg.load_flat_b()
    assert version == v2 and np.allclose(flat, 0.2)
    m = reg.manifest(v2)
    assert m.parent == v1 and m.eval == {"heldout_loss": 0.9}
    assert m.bundle_id == AdapterValidator(bundle).bundle_id
    assert reg.rollback() == v1 and reg.active() == v1
    assert reg.rollback() == INITIAL_VERSION
    with pytest.raises(AdapterError, match="nothing to roll back"):
        reg.rollback()
    reg.activate(v2)
    assert [(i.version, i.state) for i in reg.list()] == [
        (v1, AdapterState.RETIRED), (v2, AdapterState.ACTIVE)]


def test_reject_keeps_numbers_apart(bundle: Path, tmp_path: Path) -> None:
    reg = _registry(bundle, tmp_path / "adapters")
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    r = reg.reject(make_adapter(bundle, tmp_path / "a2", 0.2), parent=v1,
                   eval_result={"heldout_loss": 9.0}, reason="worse than parent")
    assert reg.active() == v1 and r == "v0002"
    assert reg.manifest(r, rejected=True).rejected_reason == "worse than parent"
    assert reg.list()[-1].state is AdapterState.REJECTED
    with pytest.raises(AdapterError):
        reg.activate(r)


def test_refuses_bad_adapter_and_keeps_active(bundle: Path, tmp_path: Path) -> None:
    reg = _registry(bundle, tmp_path / "adapters")
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    other = make_bundle(tmp_path / "other", seed=3)
    with pytest.raises(AdapterError, match="LoRA-A"):
        reg.publish(make_adapter(other, tmp_path / "bad", 0.5))
    assert reg.active() == v1 and reg.versions() == [v1]


def test_prune_keeps_active_and_rollback_target(bundle: Path, tmp_path: Path) -> None:
    reg = _registry(bundle, tmp_path / "adapters", keep=2)
    versions = [reg.publish(make_adapter(bundle, tmp_path / f"a{i}", i / 10)) for i in range(5)]
    assert reg.versions() == versions[-2:]
    reg.activate(versions[-2])
    reg.publish(make_adapter(bundle, tmp_path / "a9", 0.9), activate=False)
    # active (v0004) and its rollback target (v0005) survive even though keep=2
    assert versions[-2] in reg.versions() and versions[-1] in reg.versions()


@pytest.mark.parametrize("stage", ["staged", "renamed", "pointer-written"])
def test_kill_9_mid_publish_leaves_previous_active(bundle: Path, tmp_path: Path,
                                                   stage: str) -> None:
    root = tmp_path / "adapters"
    reg = _registry(bundle, root)
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    a2 = make_adapter(bundle, tmp_path / "a2", 0.2)
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from agent.io.adapter_fs import AdapterValidator
        from agent.io.registry import AdapterRegistry
        def hook(stage):
            if stage == {stage!r}:
                print("paused", flush=True)
                time.sleep(60)
        validator = AdapterValidator(Path({str(bundle)!r}))
        reg = AdapterRegistry(Path({str(root)!r}), validator=validator, stage_hook=hook)
        reg.publish(Path({str(a2)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "paused"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reg = _registry(bundle, root)
    assert reg.active() == v1
    version, flat = reg.load_flat_b()
    assert version == v1 and np.allclose(flat, 0.1)
    # the next publish sweeps the leftovers and goes on
    v = reg.publish(a2)
    assert reg.active() == v and not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_adapters_cli(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    state = tmp_path / "state"
    reg = _registry(bundle, state / "adapters")
    v1 = reg.publish(make_adapter(bundle, tmp_path / "a1", 0.1))
    v2 = reg.publish(make_adapter(bundle, tmp_path / "a2", 0.2), parent=v1)
    base = ["adapters", "--bundle", str(bundle), "--state-dir", str(state)]
    assert main([*base, "list"]) == 0
    listing = capsys.readouterr().out
    assert f"active: {v2}" in listing and v1 in listing
    assert main([*base, "rollback"]) == 0 and reg.active() == v1
    assert main([*base, "activate", v2]) == 0 and reg.active() == v2
    assert main([*base, "activate", "v0042"]) == 2
    assert "not in" in capsys.readouterr().err

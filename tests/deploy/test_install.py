"""`mobizo-agent install` / `uninstall` into a temporary root, through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main as cli
from agent.deploy.layout import PINNED_REQUIREMENTS
from tests.deploy.unit_check import needs_systemd_analyze, stage_for_verify, verify

SOURCE = Path(__file__).resolve().parents[2]
UNITS = ["mobizo-inference.service", "mobizo-agent.service", "mobizo-trainer.slice"]


def install(root: Path, *extra: str) -> int:
    return cli(["install", "--root", str(root), "--source", str(SOURCE), *extra])


def uninstall(root: Path, *extra: str) -> int:
    return cli(["uninstall", "--root", str(root), *extra])


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under root -> (mode, mtime_ns, content of files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    return out


def test_install_into_a_temporary_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    assert install(root, "--board", "raspberry-pi-4", "--no-venv") == 0

    units = root / "etc/systemd/system"
    for unit in UNITS:
        assert (units / unit).is_file()
    assert "MemoryMax=1024M" in (units / "mobizo-trainer.slice.d/50-board.conf").read_text()
    assert "MemoryMax=1536M" in (units / "mobizo-agent.service.d/50-board.conf").read_text()
    assert (root / "usr/lib/sysusers.d/mobizo-agent.conf").is_file()
    assert (root / "usr/lib/tmpfiles.d/mobizo-agent.conf").is_file()
    assert 'profile = "raspberry-pi-4"' in (root / "etc/mobizo-agent/agent.toml").read_text()
    assert (root / "opt/mobizo-agent/firmware_configs/raspberry-pi-4.toml").is_file()
    assert (root / "opt/mobizo-agent/share/systemd/README.md").is_file()
    assert (root / "etc/mobizo-agent/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/mobizo-agent/adapters").is_dir()
    # The live-system steps never run against a non-/ root.
    assert "systemd-sysusers" not in capsys.readouterr().out.split("note:")[0]


def test_second_install_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    install(root, "--board", "dev", "--no-venv")
    before = snapshot(root)
    capsys.readouterr()
    assert install(root, "--board", "dev", "--no-venv") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(root) == before


def test_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    assert install(root, "--board", "dev", "--no-venv", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "mobizo-agent.service" in out
    assert not root.exists()


def test_an_edited_config_is_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--board", "raspberry-pi-4", "--no-venv")
    config = root / "etc/mobizo-agent/agent.toml"

    # Unedited: a new board replaces it.
    install(root, "--board", "raspberry-pi-5", "--no-venv")
    assert 'profile = "raspberry-pi-5"' in config.read_text()
    assert not config.with_name("agent.toml.new").exists()

    # Edited: kept byte for byte; the new one lands beside it.
    edited = config.read_text() + "\n[training]\nsteps_per_burst = 5\n"
    config.write_text(edited)
    install(root, "--board", "jetson-orin-nano", "--no-venv")
    assert config.read_text() == edited
    assert 'profile = "jetson-orin-nano"' in config.with_name("agent.toml.new").read_text()
    # The board drop-ins follow the new board regardless.
    slice_dropin = root / "etc/systemd/system/mobizo-trainer.slice.d/50-board.conf"
    assert "MemoryMax=3072M" in slice_dropin.read_text()


def test_prefix_is_rewritten_in_units(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--board", "dev", "--no-venv", "--prefix", "/usr/local/mobizo")
    agent = (root / "etc/systemd/system/mobizo-agent.service").read_text()
    assert "ExecStart=/usr/local/mobizo/venv/bin/mobizo-agent run" in agent
    assert "MOBIZO_PROFILES_DIR=/usr/local/mobizo/firmware_configs" in agent
    assert "/opt/mobizo-agent" not in agent
    assert (root / "usr/local/mobizo/.mobizo-agent-prefix").is_file()


def test_board_is_required_for_another_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(tmp_path / "root", "--no-venv") == 2
    assert "--board" in capsys.readouterr().err
    assert install(tmp_path / "root", "--no-venv", "--board", "no-such-board") == 2
    err = capsys.readouterr().err
    assert "no-such-board" in err and "raspberry-pi-4" in err
    assert not (tmp_path / "root").exists()


@needs_systemd_analyze
def test_installed_units_and_dropins_pass_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--board", "jetson-agx-orin", "--no-venv", "--notify-reload", "no")
    staged = stage_for_verify(root / "etc/systemd/system", tmp_path / "verify")
    done = verify(staged, UNITS)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles")
                    is None, reason="systemd-sysusers/-tmpfiles not installed")
def test_first_boot_creates_user_and_directories(tmp_path: Path) -> None:
    """What systemd-sysusers/-tmpfiles do at the image's first boot, run offline on the root."""
    root = tmp_path / "root"
    install(root, "--board", "raspberry-pi-5", "--no-venv")
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    passwd = (root / "etc/passwd").read_text()
    assert "mobizo:" in passwd and ":/var/lib/mobizo-agent:" in passwd
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], check=True,
                   capture_output=True)
    entry = next(line for line in passwd.splitlines() if line.startswith("mobizo:"))
    uid = int(entry.split(":")[2])
    assert (root / "var/lib/mobizo-agent/tmp").stat().st_uid == uid
    assert (root / "etc/mobizo-agent/credentials").stat().st_uid == 0


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--board", "dev", "--no-venv")
    data = root / "var/lib/mobizo-agent/interactions.sqlite3"
    data.write_bytes(b"user data")
    override = root / "etc/systemd/system/mobizo-agent.service.d/override.conf"
    override.write_text("[Service]\nEnvironment=X=1\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "mobizo-agent.service").symlink_to("/etc/systemd/system/mobizo-agent.service")

    assert uninstall(root) == 0
    for unit in UNITS:
        assert not (root / "etc/systemd/system" / unit).exists()
    assert not (root / "etc/systemd/system/mobizo-trainer.slice.d").exists()
    assert override.is_file()  # the operator's drop-in stays
    assert not (wants / "mobizo-agent.service").is_symlink()  # no dangling enable link
    assert not (root / "opt/mobizo-agent").exists()
    assert not (root / "usr/lib/sysusers.d/mobizo-agent.conf").exists()
    assert data.read_bytes() == b"user data"
    assert (root / "etc/mobizo-agent/agent.toml").is_file()

    before = snapshot(root)
    assert uninstall(root) == 0  # idempotent
    assert snapshot(root) == before

    assert uninstall(root, "--purge") == 0
    assert not (root / "var/lib/mobizo-agent").exists()
    assert not (root / "etc/mobizo-agent").exists()


def test_uninstall_leaves_a_foreign_prefix_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    foreign = root / "opt/mobizo-agent"
    foreign.mkdir(parents=True)
    (foreign / "precious").write_text("not ours")
    assert uninstall(root) == 0
    assert (foreign / "precious").is_file()


FAKE_PYTHON = """#!{python}
# Stands in for the interpreter: `-m venv DIR` makes DIR/bin/python (this script);
# `-m pip ...` logs its argv. A fake at the edge (pip and PyPI), to keep the test fast.
import os, shutil, sys
log = {log!r}
with open(log, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["-m", "venv"]:
    bindir = os.path.join(sys.argv[3], "bin")
    os.makedirs(bindir, exist_ok=True)
    shutil.copy(__file__, os.path.join(bindir, "python"))
    os.chmod(os.path.join(bindir, "python"), 0o755)
"""


def test_venv_is_built_with_one_pinned_pip_command(tmp_path: Path) -> None:
    root, log = tmp_path / "root", tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)

    assert install(root, "--board", "dev", "--python", str(fake)) == 0
    calls = log.read_text().splitlines()
    assert calls[0] == f"-m venv {root}/opt/mobizo-agent/venv"
    pip = [c for c in calls if c.startswith("-m pip")]
    assert len(pip) == 1, calls
    for requirement in PINNED_REQUIREMENTS:
        assert requirement in pip[0].split()
    assert pip[0].split()[-1] == f"{SOURCE}[federated]"  # flwr for mobizo-supernode.service

    # Same source, same pins: the venv is not touched again.
    assert install(root, "--board", "dev", "--python", str(fake)) == 0
    assert log.read_text().splitlines() == calls


@pytest.mark.slow
def test_real_venv_install(tmp_path: Path) -> None:
    """The real thing: venv + pip install of this checkout with torch and executorch pinned.

    Minutes and ~1 GB of wheels; uses the machine's pip configuration (index, wheel cache).
    """
    root = tmp_path / "root"
    assert install(root, "--board", "dev", "--python", sys.executable) == 0
    exe = root / "opt/mobizo-agent/venv/bin/mobizo-agent"
    assert exe.is_file() and os.access(exe, os.X_OK)
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "mobizo-agent" in done.stdout
    versions = subprocess.run(
        [str(root / "opt/mobizo-agent/venv/bin/python"), "-c",
         "import importlib.metadata as m; print(m.version('torch'), m.version('executorch'))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert versions[0].startswith("2.13.0") and versions[1] == "1.5.1"


def test_bundle_is_copied_where_the_units_look(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tests.io.tiny_bundle import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "root"
    assert install(root, "--board", "dev", "--no-venv") == 0
    assert "no model bundle" in capsys.readouterr().out

    assert install(root, "--board", "dev", "--no-venv", "--bundle", str(bundle)) == 0
    copied = root / "var/lib/mobizo-agent/bundle"
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (copied / path.relative_to(bundle)).read_bytes() == path.read_bytes()
    before = snapshot(root)
    assert install(root, "--board", "dev", "--no-venv", "--bundle", str(bundle)) == 0
    assert snapshot(root) == before


def test_not_a_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert install(tmp_path / "root", "--board", "dev", "--no-venv", "--bundle", str(empty)) == 2
    assert "not a model bundle" in capsys.readouterr().err

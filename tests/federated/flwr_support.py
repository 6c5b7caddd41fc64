"""Flower's real deployment runtime on loopback, for the tests: a SuperLink, SuperNodes and
``flwr run``, each a real process of the ``flwr`` package's own commands.

Every process starts in its own session; :meth:`FlowerDeployment.close` stops each one and
every process it started (found by parent id in ``/proc``: Flower's SuperExec and the
``flwr-serverapp`` / ``flwr-clientapp`` processes it launches), by pid, TERM then KILL.
``$FLWR_HOME`` is the test's own directory, holding the SuperLink connection (Flower 1.42
reads connections from ``$FLWR_HOME/config.toml``, not from the app's pyproject) and the
installed app bundles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "fleet_app"
BIN = Path(sys.executable).parent
CONNECTION = "mobizo-test"


def flower_missing() -> str | None:
    """Why the real runtime cannot run here (None: it can)."""
    missing = [b for b in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr",
                           "flwr-serverapp", "flwr-clientapp") if not (BIN / b).exists()]
    return f"flwr's commands are not installed: {', '.join(missing)}" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal for ``--run-config`` / ``--node-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def app_with_clientapp(dest: Path, clientapp: str) -> Path:
    """A copy of fleet_app/ in ``dest`` whose ``clientapp`` component is ``clientapp``."""
    shutil.copytree(APP, dest, dirs_exist_ok=True)
    text = (APP / "pyproject.toml").read_text()
    line = 'clientapp = "agent.federated.supernode_app:app"'
    assert line in text, "fleet_app/pyproject.toml no longer names the supernode ClientApp"
    (dest / "pyproject.toml").write_text(text.replace(line, f'clientapp = "{clientapp}"'))
    tomllib.loads((dest / "pyproject.toml").read_text())  # still valid TOML
    return dest


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    children, out, stack = _children(), [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


class FlowerDeployment:
    """A SuperLink and SuperNodes on loopback ports under ``root`` (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=str(REPO),
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.root)

    def start_superlink(self, timeout_s: float = 60.0, database: Path | None = None) -> None:
        """Start the SuperLink (insecure, loopback, no runtime installs; its state in
        ``database``, else in memory); wait until it accepts connections."""
        argv = [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if database is not None:
            argv += ["--database", str(database)]
        self.superlink = self._start("superlink", argv)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited: {self.log('superlink')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"flower-superlink did not listen in {timeout_s} s")

    def stop_superlink(self) -> None:
        if self.superlink is not None:
            _stop([self.superlink])
            self.superlink = None

    def start_supernode(self, index: int, node_config: dict[str, Any]) -> None:
        """Start SuperNode ``index`` connected to the SuperLink, with ``node_config``."""
        config = " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())
        self.supernodes.append(self._start(f"supernode-{index}", [
            str(BIN / "flower-supernode"), "--insecure",
            "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
            "--node-config", config]))

    def run(self, app: Path, run_config: dict[str, Any],
            timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        """``flwr run <app> <connection> --run-config ... --stream``: until the run ends."""
        config = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        return subprocess.run([str(BIN / "flwr"), "run", str(app), CONNECTION,
                               "--run-config", config, "--stream"],
                              env=self.env | {"NO_COLOR": "1"}, capture_output=True,
                              text=True, timeout=timeout_s, cwd=self.root, check=False)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        """Stop every process this deployment started and their descendants."""
        _stop([*self.supernodes, *([self.superlink] if self.superlink else [])])
        self.supernodes, self.superlink = [], None
        for log in self._logs:
            log.close()
        shutil.rmtree(self.home / "apps", ignore_errors=True)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """TERM ``procs`` and their descendants together; KILL what is left after ``grace_s``."""
    pids = [pid for proc in procs for pid in _tree(proc.pid)]
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap our own children so they do not linger as zombies
        if not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.1)
    _signal([pid for pid in pids if _alive(pid)], signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=grace_s)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

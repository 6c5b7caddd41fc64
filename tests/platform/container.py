"""A container with systemd as PID 1, for the units under a real manager (issue 21, item 2).

``systemd-nspawn -b`` boots a Debian amd64 root filesystem (``scripts/platform/rootfs.sh``).
The host is not run by systemd, so there is no machined and no system bus to register with:
``--register=no --keep-unit``, and commands enter the container with ``nsenter`` on its PID 1.
The project goes in the way a device gets it, ``mobizo-agent install`` run inside, from a copy
of the working tree and a local wheel directory (no index inside).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.platform.board import CACHE, REPO, SCRIPTS

ROOTFS = CACHE / "amd64"
WHEELS = CACHE / "wheels-amd64"
SRC = CACHE / "src"
BOOT_TIMEOUT_S = 120


def missing_prerequisite() -> str | None:
    """Why this machine cannot boot the container, or None when it can try."""
    if os.geteuid() != 0:
        return "needs root: systemd-nspawn boots a container (run `sudo make test-platform`)"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                      ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} missing: apt-get install {pkg} (`make test-platform` does)"
    return None


def prepare(host_python: str) -> str | None:
    """Root filesystem, amd64 wheels and a source copy; a reason string when that failed."""
    proc = subprocess.run([str(SCRIPTS / "rootfs.sh"), "amd64", str(ROOTFS)],
                          capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        return f"rootfs.sh amd64 failed: {proc.stderr.strip()[-600:]}"
    # Keyed by pyproject.toml: a new dependency of the project fetches the wheels again.
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    stamp = WHEELS / f".complete-{digest}"
    if not stamp.exists():
        # torch's +cpu build comes from the find-links dir pip is configured with, if any;
        # [federated] is what install puts in the venv (flwr, for mobizo-supernode.service).
        subprocess.run([host_python, "-m", "pip", "download", "-q", "-d", str(WHEELS),
                        "torch==2.13.0", "executorch==1.5.1", f"{REPO}[federated]",
                        "setuptools>=68", "wheel"], check=True, capture_output=True, timeout=3600)
        stamp.touch()
    # The working tree as git sees it (tracked + untracked, not ignored): what install copies.
    shutil.rmtree(SRC, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = REPO / rel
        if src.is_file():
            (SRC / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, SRC / rel)
    return None


@dataclass
class Container:
    """A booted container; :meth:`sh` runs a command in it through its PID 1's namespaces."""

    name: str
    binds: dict[Path, str]
    process: subprocess.Popen[bytes] | None = None
    leader: int = 0
    log: Path = field(default_factory=lambda: CACHE / "nspawn.log")

    def boot(self) -> str | None:
        """Boot and wait for the manager; None when running, else the reason it did not."""
        argv = ["systemd-nspawn", "-q", "-D", str(ROOTFS), "-M", self.name, "-b",
                "--register=no", "--keep-unit", "--console=pipe"]
        argv += [f"--bind={host}:{inside}" for host, inside in self.binds.items()]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as fh:
            self.process = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"systemd-nspawn exited {self.process.returncode}: " + \
                    self.log.read_text(errors="replace").strip()[-600:]
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.leader = int(pids[0])
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return None
            time.sleep(1)
        return f"systemd in the container did not reach running in {BOOT_TIMEOUT_S} s"

    def sh(self, command: str, *, check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``command`` with sh inside the container."""
        # env -i: the host's environment (PIP_*, VIRTUAL_ENV, ...) must not leak in.
        argv = ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "/bin/sh", "-c", command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container: {command}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def shutdown(self) -> None:
        """Power the container off (SIGTERM to nspawn after 60 s, SIGKILL after 90)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.sh("systemctl poweroff --no-block", check=False, timeout=30)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

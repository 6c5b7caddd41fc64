"""The emulated Arm board and the host run it is compared with (issue 21, item 1).

The board is a Debian arm64 root filesystem (``scripts/platform/rootfs.sh``) whose binaries
the kernel hands to ``qemu-aarch64`` (binfmt_misc), with the project's aarch64 wheels in a venv
(``scripts/platform/arm64-venv.sh``). Both sides are driven through the command line only
(``python -m agent train --metrics``, ``greedy_probe.py``), so these tests do not depend on
where the agent's modules live.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "platform"
# Cached between runs (git-ignored): root filesystems, wheels, bundles, run outputs.
CACHE = REPO / "build" / "platform"
PROBE = Path(__file__).with_name("greedy_probe.py")
SCHEMES = ("none", "8da8w", "8da4w")
# The smallest bundle P-RGE dual with q=1 (2 slices of b=2) and generation need.
EXPORT_ARGS = ("--preset", "starter", "--slices", "1,2", "--batch", "2", "--max-length", "64",
               "--max-context", "128", "--prefill-chunk", "16", "--seed", "0")
# ε is spelled out: the int8 bound on g_i (test_aarch64.py) is derived through it.
TRAIN_EPS = 0.01
TRAIN_ARGS = ("--steps", "2", "--q", "1", "--batch", "2", "--mode", "prge-dual", "--no-eval",
              "--threads", "1", "--seed", "0", "--progress", "json", "--eps", str(TRAIN_EPS))
BOARD_NICENESS = 15
NOISE = ("Warning", "MIDR", "cpuinfo", "pytree", "triton", "torchao", "W1")


def missing_prerequisite() -> str | None:
    """Why this machine cannot host the board, or None when it can try."""
    if os.geteuid() != 0:
        return "needs root: chroot, binfmt_misc and mounts (run `sudo make test-platform`)"
    for tool, pkg in (("qemu-aarch64-static", "qemu-user-static"),
                      ("debootstrap", "debootstrap"), ("update-binfmts", "binfmt-support"),
                      ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
                      ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} missing: apt-get install {pkg} (`make test-platform` does)"
    return None


def _script(*argv: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # One pytest run sets the board up once, however many xdist workers it has.
    session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "BOARD_SESSION": session})


@dataclass(frozen=True)
class Board:
    """An arm64 root filesystem with the project installed, and a shared host directory."""

    rootfs: Path
    share: Path

    def run(self, command: str, *, cpu: str = "max",
            timeout: float = 3600) -> tuple[str, float]:
        """Run ``command`` (sh) on the board in /share; stdout and the seconds it took.

        ``cpu`` is qemu's CPU model, options allowed: "max" has dotprod, i8mm, SVE and SME
        ("max,sme=off" the same less SME); "cortex-a76" (the Raspberry Pi 5's core; Jetson
        Orin's A78AE has the same int8 features) has dotprod; "cortex-a72" (the Pi 4's)
        is ARMv8.0, no dot product.
        """
        # Emulation takes minutes of CPU: the board runs at niceness 15 (issue 21: a shared
        # machine), whatever the caller's; nice(1) adds to the niceness it inherits.
        nice = max(0, BOARD_NICENESS - os.nice(0))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(SCRIPTS / "arm64-run.sh"), str(self.rootfs), str(self.share), "sh", "-c",
             f"cd /share && nice -n {nice} {command}"], capture_output=True, text=True,
            timeout=timeout, check=False, env={**os.environ, "QEMU_CPU": cpu})
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise AssertionError(f"on the board: {command}\n{_quiet(proc.stderr)[-4000:]}")
        return proc.stdout, seconds


def _quiet(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in NOISE))


def make_board() -> Board | str:
    """Build (or reuse) the board; a skip reason string when this machine cannot."""
    why = missing_prerequisite()
    if why:
        return why
    rootfs = CACHE / "arm64"
    steps = ((SCRIPTS / "binfmt.sh",), (SCRIPTS / "rootfs.sh", "arm64", rootfs),
             (SCRIPTS / "arm64-venv.sh", rootfs, CACHE))
    for step in steps:
        proc = _script(*step, timeout=3600)
        if proc.returncode != 0:
            return f"{Path(step[0]).name} failed: {proc.stderr.strip()[-600:]}"
    (CACHE / "run").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROBE, CACHE / "run" / PROBE.name)  # the board sees CACHE as /share
    return Board(rootfs, CACHE)


def export_bundle(scheme: str, attention: str = "llm-ops") -> Path:
    """A starter bundle exported on the host with ``mobizo-export`` (reused while current);
    ``attention="masked"`` for ARMv8.0 boards, which cannot load the LLM ops library."""
    out = CACHE / "bundles" / f"starter-{scheme}" if attention == "llm-ops" else (
        CACHE / "bundles" / f"starter-{scheme}-{attention}")
    manifest = out / "manifest.json"
    newest_source = max(p.stat().st_mtime for p in (REPO / "exporter").rglob("*.py"))
    if manifest.is_file() and manifest.stat().st_mtime > newest_source:
        return out
    exe = Path(sys.executable).with_name("mobizo-export")
    subprocess.run([str(exe), *EXPORT_ARGS, "--quantize", scheme, "--attention", attention,
                    "--force", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=3600)
    return out


def write_data(path: Path) -> Path:
    """A small fixed prompt/response JSONL, the same bytes on both sides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"What is item {i}?", "response": f"Item {i} is number {i * 7 % 13}."}
            for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_argv(python: str, bundle: str, data: str, out: str) -> list[str]:
    """``mobizo-agent train`` writing per-step metrics (g_i) next to its adapter."""
    return [python, "-m", "agent", "--log-level", "WARNING", "train", "--bundle", bundle,
            "--data", data, "--out", f"{out}/adapter", "--metrics", f"{out}/metrics.jsonl",
            *TRAIN_ARGS]


def _steps(metrics: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in rows if "projected_grads" in r]


def projected_grads(metrics: Path) -> list[list[float]]:
    """g_i of each step, from the trainer's metrics JSON lines."""
    return [list(r["projected_grads"]) for r in _steps(metrics)]


@dataclass(frozen=True)
class SideRun:
    """What one platform computed: g_i of every step (flattened), greedy ids, timings.

    ``loss_plus``/``loss_minus`` are the two losses each g_i is the difference quotient of,
    ``step_s`` the trainer's own seconds per step (without interpreter start and load).
    """

    g: list[float]
    loss_plus: list[float]
    loss_minus: list[float]
    step_s: list[float]
    tokens: list[int]
    first_logits: list[float]
    train_s: float
    greedy_s: float
    load_s: float
    generate_s: float
    margins: tuple[float, ...] = ()


def _side(metrics: Path, probe_stdout: str, train_s: float, greedy_s: float) -> SideRun:
    probe = json.loads([line for line in probe_stdout.splitlines() if line.startswith("{")][-1])
    steps = _steps(metrics)
    return SideRun(g=[g for step in projected_grads(metrics) for g in step],
                   loss_plus=[x for r in steps for x in r["loss_plus"]],
                   loss_minus=[x for r in steps for x in r["loss_minus"]],
                   step_s=[float(r["seconds"]) for r in steps],
                   tokens=probe["tokens"], first_logits=probe["first_logits"],
                   train_s=train_s, greedy_s=greedy_s, load_s=probe["load_s"],
                   generate_s=probe["generate_s"], margins=tuple(probe.get("margins", ())))


def run_host(scheme: str, bundle: Path, data: Path) -> SideRun:
    """Train and greedy-decode on the host; g_i, the probe's result and the seconds taken."""
    # One directory per pytest-xdist worker: the trainer appends to its metrics file, and
    # two workers comparing the same scheme on different CPUs must not share one.
    out = CACHE / "run" / f"x86_64-{scheme}{os.environ.get('PYTEST_XDIST_WORKER', '')}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(train_argv(sys.executable, str(bundle), str(data), str(out)), check=True,
                   capture_output=True, text=True, timeout=1800)
    t1 = time.perf_counter()
    probe = subprocess.run([sys.executable, str(PROBE), str(bundle)], check=True,
                           capture_output=True, text=True, timeout=1800)
    return _side(out / "metrics.jsonl", probe.stdout, t1 - t0, time.perf_counter() - t1)


def run_board(board: Board, scheme: str, bundle: Path, data: Path, cpu: str) -> SideRun:
    """The same on the board: paths are relative to the shared cache directory."""
    out = CACHE / "run" / f"aarch64-{cpu}-{scheme}"
    shutil.rmtree(out, ignore_errors=True)
    rel = [str(p.relative_to(CACHE)) for p in (bundle, data, out)]
    _, train_s = board.run(" ".join(train_argv("python", *rel)), cpu=cpu)
    stdout, greedy_s = board.run(f"python run/{PROBE.name} {rel[0]}", cpu=cpu)
    return _side(out / "metrics.jsonl", stdout, train_s, greedy_s)


def max_rel_diff(a: list[float], b: list[float], floor: float = 1e-6) -> float:
    """max |a-b| / max(|a|, floor) over paired values."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} values"
    return max((abs(x - y) / max(abs(x), floor) for x, y in zip(a, b, strict=True)),
               default=0.0)


def record(name: str, row: dict[str, object]) -> None:
    """Append a result row to build/platform/report.jsonl (the closing note's table)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "report.jsonl").open("a") as fh:
        fh.write(json.dumps({"test": name, "at": time.strftime("%F %T"), **row}) + "\n")

"""``mobizo-bench daemon``: the agent daemon's own footprint, idle and during a burst.

One run on this machine, real processes (daemon, trainer, store); the device is a sysfs tree
in a temporary directory so the benchmark decides when the "charger" is plugged in:

1. Idle: the daemon waits on battery for ``--idle-seconds``; its CPU (utime + stime from
   ``/proc/<pid>/stat``) and RSS are sampled.
2. Burst: the charger is plugged in; measured are the time from that moment to the first ZO
   step (the trainer's first metrics line, and the daemon's own figure), and the daemon's
   and the trainer's CPU and peak RSS while the burst runs.

Targets (issue 4): the daemon idles under 1% of a core and under 80 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "agent daemon footprint (idle and during a burst) and time to the first ZO step"

_TCK = os.sysconf("SC_CLK_TCK")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle sampling time")
    parser.add_argument("--tick-seconds", type=float, default=2.0,
                        help="daemon main-loop tick (its production default is 2 s)")
    parser.add_argument("--steps", type=int, default=10, help="ZO steps in the burst")
    parser.add_argument("--examples", type=int, default=32, help="interactions seeded")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TCK
    except (OSError, IndexError, ValueError):
        return None


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _Sampler:
    """CPU share and RSS of one process between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = _cpu_seconds(pid) or 0.0
        self.rss: list[float] = []
        self.last_cpu = self.c0
        self.last_t = self.t0

    def sample(self) -> None:
        rss = _rss_mb(self.pid)
        cpu = _cpu_seconds(self.pid)
        if rss is not None:
            self.rss.append(rss)
        if cpu is not None:
            self.last_cpu, self.last_t = cpu, time.monotonic()

    def result(self) -> dict[str, Any]:
        span = max(1e-9, self.last_t - self.t0)
        return {"cpu_percent_of_core": round(100 * (self.last_cpu - self.c0) / span, 3),
                "rss_mb_mean": round(sum(self.rss) / len(self.rss), 1) if self.rss else None,
                "rss_mb_peak": round(max(self.rss), 1) if self.rss else None,
                "seconds": round(span, 2)}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _device(root: Path, plugged: bool) -> None:
    ps = root / "sys" / "class" / "power_supply"
    _write(ps / "AC" / "type", "Mains\n")
    _write(ps / "AC" / "online", "1\n" if plugged else "0\n")
    _write(ps / "BAT0" / "type", "Battery\n")
    _write(ps / "BAT0" / "capacity", "100\n")
    _write(ps / "BAT0" / "status", "Charging\n" if plugged else "Discharging\n")
    _write(root / "proc" / "loadavg", "0.1 0.1 0.1 1/100 1\n")
    _write(root / "proc" / "meminfo", "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")


def _config(work: Path, bundle: Path, steps: int) -> Path:
    text = f"""
[device]
profile = "dev"
sysfs_root = "{work / 'device'}"
procfs_root = "{work / 'device' / 'proc'}"
[paths]
state_dir = "{work / 'state'}"
[service]
bundle_dir = "{bundle.resolve()}"
inference_url = "http://127.0.0.1:9"
request_timeout_s = 1.0
[constraints]
require_charging_or_mains = true
idle_minutes = 0.0
min_new_examples = 4
cooldown_minutes = 0.0
min_available_memory_mb = 256
stop_available_memory_mb = 128
[training]
steps_per_burst = {steps}
max_seconds_per_burst = 600.0
checkpoint_every = 5
[data]
heldout_share = 0.25
min_heldout_examples = 2
[logging]
journal = "off"
"""
    path = work / "agent.toml"
    path.write_text(text)
    return path


def _status(state: Path) -> dict[str, Any]:
    from agent.io.control_socket import control_request

    reply = control_request(state / "control.sock", "status", timeout=30)
    return reply.result or {}


def run_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from agent.io.store import InteractionStore
    from agent.training.sample_data import constant_response_rows

    state = work / "state"
    _device(work / "device", plugged=False)
    store = InteractionStore(state / "interactions.sqlite3")
    store.import_rows(constant_response_rows(args.examples, seed=1))
    store.close()
    cfg = _config(work, args.bundle, args.steps)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg),
                             "--tick-seconds", str(args.tick_seconds)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    report: dict[str, Any] = {"tick_seconds": args.tick_seconds, "steps": args.steps}
    try:
        deadline = time.monotonic() + 60
        while not (state / "control.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start; see {work / 'daemon.log'}")
            time.sleep(0.1)
        time.sleep(2 * args.tick_seconds)  # past start-up
        idle = _Sampler(proc.pid)
        end = time.monotonic() + args.idle_seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            idle.sample()
        report["daemon_idle"] = idle.result()
        report["daemon_heavy_modules"] = _status(state)["daemon"]["heavy_modules"]

        metrics = state / "run" / "metrics.jsonl"
        _device(work / "device", plugged=True)
        plugged_at = time.monotonic()
        busy = _Sampler(proc.pid)
        trainer: _Sampler | None = None
        first_step = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(0.2)
            busy.sample()
            if first_step is None and metrics.exists() and metrics.stat().st_size > 0:
                first_step = time.monotonic() - plugged_at
            if trainer is None:
                pid = _status(state)["daemon"].get("trainer_pid")
                if pid:
                    trainer = _Sampler(pid)
            elif _rss_mb(trainer.pid) is not None:
                trainer.sample()
            last = _status(state).get("last_burst") if trainer is not None else None
            if last and last.get("outcome") in ("published", "rejected", "failed"):
                report["outcome"] = last["outcome"]
                report["steps_per_s"] = last.get("steps_per_s")
                break
        doc = _status(state)["daemon"]
        report["daemon_during_burst"] = busy.result()
        report["trainer"] = trainer.result() if trainer else None
        report["constraints_hold_to_first_step_s"] = {
            "seen_from_outside": round(first_step, 2) if first_step is not None else None,
            "daemon_measured": doc.get("first_step_latency_s"),
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    return report


def main(args: argparse.Namespace) -> int:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run_bench(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="mobizo-bench-daemon-") as tmp:
            report = run_bench(args, Path(tmp))
    if args.json:
        print(json.dumps(report))
        return 0
    idle = report["daemon_idle"]
    print(f"daemon idle: {idle['cpu_percent_of_core']:.2f}% of a core, RSS "
          f"{idle['rss_mb_mean']} MB (target < 1%, < 80 MB); heavy modules: "
          f"{report['daemon_heavy_modules'] or 'none'}")
    busy = report["daemon_during_burst"]
    print(f"daemon during burst: {busy['cpu_percent_of_core']:.2f}% of a core, RSS peak "
          f"{busy['rss_mb_peak']} MB")
    if report.get("trainer"):
        t = report["trainer"]
        print(f"trainer: {t['cpu_percent_of_core']:.1f}% of a core, RSS peak {t['rss_mb_peak']} MB")
    lat = report["constraints_hold_to_first_step_s"]
    print(f"constraints hold → first ZO step: {lat['seen_from_outside']} s (daemon: "
          f"{lat['daemon_measured']} s); burst outcome {report.get('outcome')}")
    return 0

"""Helpers for the daemon tests: a fake device tree, a notify socket, real processes.

The fake sysfs/procfs tree is the only fake (house style): the daemon, the trainer, the
evaluator, the inference service and the store are the real ones, each its own process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # the daemon never sees a half-written sensor file


class FakeDevice:
    """A sysfs + procfs tree: mains adapter, a battery, load and memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys" / "class" / "power_supply"
        self.proc = root / "proc"
        _write(self.sys / "AC" / "type", "Mains\n")
        _write(self.sys / "BAT0" / "type", "Battery\n")
        _write(self.sys / "BAT0" / "capacity", "100\n")
        _write(self.proc / "loadavg", "0.10 0.10 0.10 1/100 1\n")
        _write(self.proc / "meminfo", "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")
        self.plug(True)

    def heat(self, celsius: float) -> None:
        """One thermal zone at ``celsius``."""
        zone = self.root / "sys" / "class" / "thermal" / "thermal_zone0"
        _write(zone / "type", "cpu-thermal\n")
        _write(zone / "temp", f"{int(celsius * 1000)}\n")

    def plug(self, on: bool) -> None:
        """Charger in (mains online, battery charging) or out (discharging)."""
        _write(self.sys / "AC" / "online", "1\n" if on else "0\n")
        _write(self.sys / "BAT0" / "status", "Charging\n" if on else "Discharging\n")


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; records every field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for field in data.decode().split("\n"):
                if field:
                    self.messages.append((now, field))

    def fields(self) -> list[str]:
        return [m for _, m in list(self.messages)]

    def keys(self) -> list[str]:
        """Field names in order, consecutive repeats collapsed (``READY``, ``STATUS``, ...)."""
        out: list[str] = []
        for f in self.fields():
            key = f.split("=", 1)[0]
            if not out or out[-1] != key:
                out.append(key)
        return out

    def times_of(self, field: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == field]

    def wait_for(self, field_prefix: str, timeout: float, after: int = 0) -> int:
        """Index of the first field starting with ``field_prefix`` at or after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.fields()
            for i in range(after, len(fields)):
                if fields[i].startswith(field_prefix):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {field_prefix!r} within {timeout} s; got {self.fields()[-20:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A TOML config file from nested dicts."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def base_config(tmp: Path, device: FakeDevice, bundle: Path, *, url: str = "http://127.0.0.1:9",
                **changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dev profile with tiny, fast, deterministic bursts on the fake device."""
    sections: dict[str, dict[str, Any]] = {
        "device": {"profile": "dev", "sysfs_root": str(device.root),
                   "procfs_root": str(device.proc)},
        "paths": {"state_dir": str(tmp / "state")},
        "service": {"bundle_dir": str(bundle), "inference_url": url, "request_timeout_s": 2.0},
        "constraints": {"require_charging_or_mains": True, "idle_minutes": 0.0,
                        "min_new_examples": 4, "cooldown_minutes": 0.0,
                        "min_available_memory_mb": 256, "stop_available_memory_mb": 128},
        "training": {"mode": "prge-dual", "q": 2, "batch": 2, "steps_per_burst": 6,
                     "max_seconds_per_burst": 120.0, "lr": 0.02, "eps": 0.01,
                     "checkpoint_every": 1, "nice": 0, "sched_idle": False, "seed": 3},
        "data": {"heldout_share": 0.3, "min_heldout_examples": 2},
        "adapters": {"eval_margin": 0.0, "eval_max_examples": 8},
        "logging": {"level": "INFO", "journal": "off"},
    }
    for name, values in changes.items():
        sections.setdefault(name, {}).update(values)
    return sections


def seed_store(state_dir: Path, n: int = 24, response: str = "ok!") -> None:
    """Interactions a tiny model learns in a few ZO steps: one constant reply."""
    from agent.io.store import InteractionStore
    from agent.training.sample_data import constant_response_rows

    state_dir.mkdir(parents=True, exist_ok=True)
    store = InteractionStore(state_dir / "interactions.sqlite3")
    try:
        # Fixed ids: the held-out split is stable by id, so random ids made the eval gate's
        # verdict on a 6-step burst depend on which examples happened to be held out.
        rows = [dict(row, id=f"seed-{k:04d}")
                for k, row in enumerate(constant_response_rows(n, response=response, seed=1))]
        store.import_rows(rows)
    finally:
        store.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


class ServiceProcess:
    """``mobizo-agent serve`` on an ephemeral loopback port."""

    def __init__(self, bundle: Path, state_dir: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--bundle", str(bundle), "--state-dir",
             str(state_dir), "--listen", "127.0.0.1:0", "--watch-interval", "0.25",
             "--max-tokens", "4", "--threads", "1"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.search(r"serving on ([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            raise AssertionError(f"service did not start: {line!r}\n{log_path.read_text()[-3000:]}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.url = f"http://{self.host}:{self.port}"
        self.token_file = state_dir / "inference.token"  # made by the service at its start

    def client(self) -> Any:
        from agent.io.http import Client

        return Client(self.host, self.port, timeout=60, token_file=self.token_file)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class DaemonProcess:
    """``mobizo-agent run`` as a real process with a log file and the control socket."""

    def __init__(self, config: Path, state_dir: Path, log_path: Path, *,
                 notify: NotifySocket | None = None, watchdog_usec: int | None = None,
                 tick: float = 0.2, extra: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in terminate()
        env: dict[str, str] = {}
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify.path)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), "--tick-seconds",
             str(tick), "--stop-grace-seconds", "60", "--failure-backoff-seconds", "2",
             "--debug-hooks", *(extra or [])],
            cwd=REPO, env=_env(**env), stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def control(self, cmd: str, args: dict[str, Any] | None = None,
                timeout: float = 30.0) -> dict[str, Any]:
        from agent.io.control_socket import control_request

        reply = control_request(self.state_dir / "control.sock", cmd, args, timeout=timeout)
        assert reply.ok, reply.error
        return reply.result or {}

    def wait_socket(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if (self.state_dir / "control.sock").exists():
                return
            time.sleep(0.1)
        raise AssertionError(f"no control socket after {timeout} s:\n{self.log()[-4000:]}")

    def status(self) -> dict[str, Any]:
        return self.control("status")

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} waiting for {what}:"
                                     f"\n{self.log()[-4000:]}")
            try:
                last = self.status()
            except Exception:  # noqa: BLE001 - socket not there yet / busy
                time.sleep(0.1)
                continue
            if pred(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status "
                             f"{json.dumps(last)[:1500]}\n{self.log()[-4000:]}")

    def terminate(self, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


def maps_mention(pid: int, needle: str) -> bool:
    with open(f"/proc/{pid}/maps") as fh:
        return needle in fh.read()

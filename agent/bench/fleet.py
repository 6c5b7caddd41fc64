"""``mobizo-bench fleet``: the fleet link through a real broker.

Measures, against a local mosquitto (started here unless ``--host`` is given) and the fleet
link hosted in its own process (:mod:`agent.controller.simulator`, so its CPU and memory are its
own):

* round-trip latency of ``status`` commands one at a time (p50 / p99),
* commands answered per second with a window of requests in flight, and the latency under
  that load,
* the link process's CPU use and resident memory while connected and idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HELP = "fleet link: commands/s, round-trip p50/p99 through the broker, idle CPU and RSS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="use this broker instead of starting a local mosquitto")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--sequential", type=int, default=500, help="one-at-a-time round trips")
    parser.add_argument("--burst", type=int, default=5000, help="commands in the throughput run")
    parser.add_argument("--window", type=int, default=100, help="requests in flight")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle measurement length")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="the link's")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Requester:
    """An MQTT 5 controller client matching replies by correlation data."""

    def __init__(self, host: str, port: int, fleet: str, device: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.core.topics import DeviceTopics, FleetTopics
        from agent.io.mqtt import disable_nagle

        self.topic = DeviceTopics.for_device(fleet, device).cmd("status")
        self.reply = FleetTopics(fleet).controller_reply(f"bench{uuid.uuid4().hex[:6]}")
        self.sent: dict[int, float] = {}
        self.rtts: list[float] = []
        self._counter = 0
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_socket_open = disable_nagle
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(self.reply, qos=1)
        if not subscribed.wait(5):
            raise RuntimeError("benchmark client: no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        key = int.from_bytes(msg.properties.CorrelationData, "big")
        with self.cond:
            started = self.sent.pop(key, None)
            if started is not None:
                self.rtts.append(now - started)
            self.cond.notify_all()

    def send(self, key: int) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply
        props.CorrelationData = key.to_bytes(8, "big")
        with self.cond:
            self.sent[key] = time.perf_counter()
        self.client.publish(self.topic, b"{}", qos=1, properties=props)

    def run(self, count: int, window: int, timeout: float = 120.0) -> tuple[float, list[float]]:
        """Send ``count`` requests keeping ``window`` in flight; (elapsed s, rtts)."""
        with self.cond:
            self.rtts = []
            self.sent.clear()  # forget requests of an earlier, abandoned run
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        next_key = 0
        with self.cond:
            while len(self.rtts) < count:
                while next_key < count and len(self.sent) < window:
                    self.cond.release()
                    try:
                        self._counter += 1
                        self.send(self._counter)
                    finally:
                        self.cond.acquire()
                    next_key += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(self.rtts)}/{count} answers within {timeout} s")
                self.cond.wait(0.5)
        return time.perf_counter() - start, list(self.rtts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(args: argparse.Namespace) -> int:
    from agent.controller.localbroker import LocalBroker

    work = Path(tempfile.mkdtemp(prefix="mobizo-bench-fleet-"))
    broker = None
    host, port = args.host, args.port
    if host is None:
        broker = LocalBroker(work / "broker")
        broker.start()
        host, port = broker.host, broker.port
    fleet, device = f"bench{uuid.uuid4().hex[:6]}", "dev1"
    # The link's throughput is measured, not its per-topic inbound rate limit: lift that.
    mqtt = {"host": host, "port": port, "fleet": fleet, "protocol": args.protocol,
            "inbound_rate_per_s": 100_000.0, "inbound_burst": 1_000_000}
    agent = _start_simulated_agent(device, work / "agent", mqtt)
    results: dict[str, Any] = {"broker": f"{host}:{port}", "link_protocol": args.protocol}
    try:
        assert agent.stdout is not None
        agent.stdout.readline()  # "started"
        req = _Requester(host, port, fleet, device)
        _wait_for_link(req, timeout_s=15)
        req.run(50, 10)  # warm-up
        results["sequential"] = _sequential(req, args.sequential)
        results["throughput"] = _throughput(req, agent.pid, args.burst, args.window)
        req.close()
        time.sleep(1.0)  # let the burst's tail settle
        results["idle"] = _idle(agent.pid, args.idle_s)
    finally:
        _stop(agent)
        if broker is not None:
            broker.stop()
    _print_report(results, args.protocol)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def _start_simulated_agent(device: str, state_dir: Path,
                           mqtt: dict[str, Any]) -> subprocess.Popen[str]:
    """The simulated daemon + fleet link (no torch) in a child process."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.controller.simulator",
            "--device",
            device,
            "--state-dir",
            str(state_dir),
            "--mqtt-json",
            json.dumps(mqtt),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(agent: subprocess.Popen[str]) -> None:
    agent.terminate()
    try:
        agent.wait(10)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait(5)


def _wait_for_link(req: _Requester, timeout_s: float) -> None:
    """Until the link answers (it subscribes on connect)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req.run(1, 1, timeout=1.0)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise


def _sequential(req: _Requester, count: int) -> dict[str, Any]:
    """Round trips one at a time."""
    _elapsed, rtts = req.run(count, 1)
    return {
        "count": count,
        "rtt_p50_ms": 1e3 * _percentile(rtts, 0.5),
        "rtt_p99_ms": 1e3 * _percentile(rtts, 0.99),
        "rtt_mean_ms": 1e3 * statistics.mean(rtts),
    }


def _throughput(req: _Requester, pid: int, count: int, window: int) -> dict[str, Any]:
    """``count`` commands with ``window`` in flight, and the link's CPU for them."""
    cpu0 = _proc_cpu_s(pid)
    elapsed, rtts = req.run(count, window)
    return {
        "count": count,
        "window": window,
        "commands_per_s": count / elapsed,
        "rtt_p50_ms": 1e3 * _percentile(rtts, 0.5),
        "rtt_p99_ms": 1e3 * _percentile(rtts, 0.99),
        "link_cpu_s_per_1000": 1000 * (_proc_cpu_s(pid) - cpu0) / count,
    }


def _idle(pid: int, idle_s: float) -> dict[str, Any]:
    """CPU and peak RSS of the idle process over ``idle_s`` seconds."""
    cpu0, t0 = _proc_cpu_s(pid), time.monotonic()
    rss = [_proc_rss_mb(pid)]
    while time.monotonic() - t0 < idle_s:
        time.sleep(min(1.0, idle_s))
        rss.append(_proc_rss_mb(pid))
    wall = time.monotonic() - t0
    return {"seconds": wall, "cpu_pct": 100 * (_proc_cpu_s(pid) - cpu0) / wall,
            "rss_mb": max(rss)}


def _print_report(results: dict[str, Any], protocol: str) -> None:
    s, t, i = results["sequential"], results["throughput"], results["idle"]
    print(
        f"fleet link via {results['broker']} (link MQTT {protocol}; idle process = "
        "simulated daemon + link, no torch)"
    )
    print(
        f"  one at a time : p50 {s['rtt_p50_ms']:.2f} ms  p99 {s['rtt_p99_ms']:.2f} ms "
        f"({s['count']} round trips)"
    )
    print(
        f"  throughput    : {t['commands_per_s']:.0f} commands/s with {t['window']} in flight; "
        f"p50 {t['rtt_p50_ms']:.1f} ms  p99 {t['rtt_p99_ms']:.1f} ms; "
        f"link CPU {t['link_cpu_s_per_1000']:.2f} s per 1000 commands"
    )
    print(
        f"  idle          : CPU {i['cpu_pct']:.2f} %  RSS {i['rss_mb']:.1f} MB "
        f"over {i['seconds']:.0f} s"
    )


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m agent.bench.fleet", description=HELP)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))

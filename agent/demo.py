"""The out-of-the-box run (``make run``): the whole loop on this machine, in one terminal.

What it shows, with no broker and no download needed:

1. the inference service starts on the starter bundle and answers a scripted user;
2. the user rates answers and corrects the wrong ones (the sample persona's facts);
3. the agent daemon, on the ``dev`` profile, sees the user go idle, runs a MobiZO burst,
   evaluates the candidate against the serving adapter and publishes it;
4. the service switches to the new adapter without a restart, and the next answer says so.

If ``mosquitto`` is installed, a broker is started on a loopback port and the fleet view
(``mobizo-fleet devices``) is shown too. Ctrl-C stops everything cleanly, in reverse order.

``--short`` is the CI variant: fewer interactions, exit 0 as soon as an adapter was published
and served, non-zero on a timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import MobizoError
from agent.io.status_file import read_status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Console:
    """Plain, line-based output that reads well in a terminal and in a CI log."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {who:>8} | {text}", flush=True)


def _printable(text: str, width: int = 40) -> str:
    """What a terminal can show of a reply: the starter model's random bytes included."""
    return "".join(c if c.isprintable() else "·" for c in text[:width])


class Http:
    """A tiny JSON client for the local service: the real HTTP server, no mocks."""

    def __init__(self, port: int, timeout: float = 120.0, token_file: Path | None = None) -> None:
        self.port = port
        self.timeout = timeout
        self.token_file = token_file  # the service's bearer token, made at its start

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            from agent.io.token_file import read_token

            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"}
            token = read_token(self.token_file) if self.token_file is not None else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except json.JSONDecodeError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def wait_healthy(self, timeout: float, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise MobizoError(f"the inference service exited with code {proc.returncode}")
            try:
                status, _ = self.call("GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise MobizoError(f"the inference service did not become healthy in {timeout:.0f} s")


def _active_version(client: Http) -> str | None:
    status, body = client.call("GET", "/health")
    if status != 200 or not isinstance(body, dict):
        return None
    adapter = body.get("adapter")
    value = adapter.get("version") if isinstance(adapter, dict) else None
    return str(value) if value else None


def _fitting_q(bundle: Path, batch: int = 2, wanted: Sequence[int] = (4, 2, 1)) -> int:
    """The largest q whose P-RGE dual shape (2q slices x batch) the bundle exports.

    The dev profile asks for q = 4; the small bundle the tests export stops at 4 slices.
    """
    from agent.io.bundle_files import read_manifest

    train = read_manifest(bundle).train
    for q in wanted:
        if train.method_for(2 * q, batch) is not None:
            return q
    raise MobizoError(f"{bundle} exports no P-RGE dual shape for batch {batch}; re-export it "
                      "with `mobizo-export --preset starter --slices 1,2,4,8 --batch 2`")


def _write_config(path: Path, *, state_dir: Path, bundle: Path, port: int,
                  mqtt_port: int | None, steps: int, lr: float) -> None:
    lines = [
        "# Written by the out-of-the-box run (agent/demo.py): dev profile, local paths.",
        "[device]", 'profile = "dev"', "",
        "[paths]", f'state_dir = "{state_dir}"', "",
        "[service]", f'bundle_dir = "{bundle}"', f'inference_url = "http://127.0.0.1:{port}"', "",
        "[training]", f"q = {_fitting_q(bundle)}", "batch = 2",
        f"steps_per_burst = {steps}", f"lr = {lr}", "",
        # The held-out split is stable by (random) interaction id: with a short session a
        # second held-out example is not guaranteed, so the demo's gate accepts one.
        "[data]", "min_heldout_examples = 1", "",
    ]
    if mqtt_port is not None:
        lines += ["[mqtt]", "enabled = true", f"port = {mqtt_port}", 'fleet = "demo"',
                  'device_id = "dev-board"', ""]
    path.write_text("\n".join(lines))


def _start_broker(state_dir: Path, console: Console) -> tuple[subprocess.Popen[bytes], int] | None:
    sbin = Path("/usr/sbin/mosquitto")  # Debian's package puts the broker outside PATH
    exe = shutil.which("mosquitto") or (str(sbin) if sbin.exists() else None)
    if exe is None:
        console.say("fleet", "mosquitto not installed: running without the fleet link")
        return None
    port = _free_port()
    conf = state_dir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    console.say("fleet", f"mosquitto broker on 127.0.0.1:{port}")
    return proc, port


def _user_session(client: Http, rows: Sequence[dict[str, Any]], console: Console) -> int:
    """Chat like a user, then rate each answer and correct it with the persona's truth."""
    sent = 0
    for row in rows:
        status, body = client.call("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": row["prompt"]}],
            "max_tokens": 24, "temperature": 0.0,
        })
        if status != 200 or not isinstance(body, dict):
            console.say("user", f"request failed ({status}): {body}")
            continue
        answer = body["choices"][0]["message"]["content"]
        interaction = body.get("id")
        console.say("user", f"{row['prompt']!r} -> '{_printable(answer)}' (adapter "
                            f"{body.get('adapter_version', '?')})")
        status, _ = client.call("POST", "/v1/feedback", {
            "id": interaction, "rating": "down", "correction": row["response"],
        })
        if status == 200:
            sent += 1
    console.say("user", f"corrected {sent} answers; the user now goes idle")
    return sent


def _stop(procs: list[tuple[str, subprocess.Popen[bytes]]], console: Console) -> None:
    """Stop children in reverse start order: SIGTERM, then SIGKILL after a grace period."""
    for name, proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            console.say(name, f"stopped (exit {proc.returncode})")


def run_demo(args: argparse.Namespace) -> int:
    from agent.training.sample_data import generate_interactions

    console = Console(quiet=args.quiet)
    bundle = args.bundle.resolve()
    state_dir = args.state_dir.resolve()
    if state_dir.exists() and not args.keep_state:
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    exe = [sys.executable, "-m", "agent"]
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        broker = None if args.no_mqtt else _start_broker(state_dir, console)
        if broker:
            procs.append(("broker", broker[0]))
        port = args.port or _free_port()
        config = state_dir / "agent.toml"
        _write_config(config, state_dir=state_dir, bundle=bundle, port=port,
                      mqtt_port=broker[1] if broker else None, steps=args.steps, lr=args.lr)

        console.say("service", f"starting the inference service on 127.0.0.1:{port}")
        serve = subprocess.Popen(
            [*exe, "serve", "--bundle", str(bundle), "--state-dir", str(state_dir),
             "--listen", f"127.0.0.1:{port}"],
            stdout=(logs / "serve.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(("service", serve))
        client = Http(port, token_file=state_dir / "inference.token")
        client.wait_healthy(120, serve)
        first_version = _active_version(client)
        console.say("service", f"ready, serving adapter {first_version or 'initial (bundle)'}")

        rows = generate_interactions(args.interactions, seed=args.seed)
        _user_session(client, rows, console)

        console.say("agent", f"starting the agent daemon (config {config})")
        daemon = subprocess.Popen(
            [*exe, "run", "--config", str(config)],
            stdout=(logs / "agent.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(("agent", daemon))
        published = _follow(client, daemon, state_dir, first_version, console, args.timeout)
        if published is None:
            console.say("demo", f"no adapter was published in {args.timeout:.0f} s; "
                                f"see {logs}/agent.log")
            return 1
        status, body = client.call("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": rows[0]["prompt"]}],
            "max_tokens": 24, "temperature": 0.0,
        })
        served = body.get("adapter_version") if isinstance(body, dict) else None
        if status == 200 and isinstance(body, dict):
            console.say("user", f"{rows[0]['prompt']!r} -> "
                                f"'{_printable(body['choices'][0]['message']['content'])}' "
                                f"(adapter {served})")
        if broker:
            _show_fleet(broker[1], console)
        ok = served == published
        console.say("demo", (f"done: adapter {published} was published and is being served")
                    if ok else f"adapter {published} was published but the service served {served}")
        if not args.short and ok:
            console.say("demo", "the agent keeps running; press Ctrl-C to stop everything")
            while all(p.poll() is None for _, p in procs):
                time.sleep(1)
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.say("demo", "Ctrl-C: stopping")
        return 130
    finally:
        _stop(procs, console)


def _follow(client: Http, daemon: subprocess.Popen[bytes], state_dir: Path,
            first_version: str | None, console: Console, timeout: float) -> str | None:
    """Print the daemon's state as it changes until the service serves a new adapter."""
    deadline = time.monotonic() + timeout
    last = last_line = ""
    while time.monotonic() < deadline:
        # Only print a line when the state changes, not when a countdown in it ticks.
        if daemon.poll() is not None:
            console.say("agent", f"the daemon exited with code {daemon.returncode}")
            return None
        try:
            headline = read_status(state_dir).headline()
        except MobizoError:
            headline = "starting"
        shape = re.sub(r"\d+(\.\d+)?", "#", headline)
        if shape != last or "training" in headline and headline != last_line:
            console.say("agent", headline)
            last, last_line = shape, headline
        version = _active_version(client)
        if version and version != first_version:
            console.say("service", f"switched to adapter {version} (no restart)")
            return version
        time.sleep(0.5)
    return None


def _show_fleet(port: int, console: Console) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.controller.cli", "--host", "127.0.0.1", "--port", str(port),
         "--fleet", "demo", "devices"],
        capture_output=True, text=True, timeout=30,
    )
    for line in (out.stdout or out.stderr).splitlines():
        console.say("fleet", line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("build/bundles/starter"))
    parser.add_argument("--state-dir", type=Path, default=Path("build/demo"))
    parser.add_argument("--keep-state", action="store_true", help="reuse the previous state dir")
    parser.add_argument("--port", type=int, default=0, help="service port (default: a free one)")
    parser.add_argument("--interactions", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="ZO steps per burst")
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="ZO learning rate (the random starter model needs 5e-3..1e-2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--short", action="store_true", help="exit once an adapter is served (CI)")
    parser.add_argument("--no-mqtt", action="store_true", help="do not start a broker")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) stops the children as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_demo(args)
    except MobizoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``mobizo-bench memory``: what the board's memory holds while serving and training.

Real processes, measured whole from /proc (agent/bench/memory_procs.py), per bundle (one per
quantization scheme, e.g. an fp32 and an 8da8w export of the same model):

1. **service alone**: ``mobizo-agent serve`` after answering one request (Rss, Pss), the sum
   over its process tree: its front and its engine child (agent/io/engine.py), each printed;
2. **burst, program released** (what the daemon does, docs/architecture.md "Memory on the
   board"): the service releases its program, ``mobizo-agent train`` runs ``--steps`` P-RGE
   steps; the peak Pss of service + trainer before any request (the released service is its
   front alone: the engine child has exited), the trainer's own peak
   (``wait4`` ru_maxrss) and the drop of ``MemAvailable`` from before the service started.
   After the trainer's first step a request is sent: it is answered after the program loads
   again; its latency against a warm request is the price of the release;
3. **burst, program kept** (the alternative): the same with the service holding its program
   (the request then waits only for the CPU the trainer shares);
4. **one process**: the infer and train programs loaded in one process (the other way to hold
   one copy: XNNPACK's weight cache shares the packed weights inside a process).

The children run as the systemd units run them, without CAP_IPC_LOCK (:func:`as_on_the_board`):
as root the runtime's ``mlock`` of the weights file would pin pages a board does not pin.
Everything is printed against the weight bytes in the bundle's scheme (:func:`weight_bytes`)
and the bundle's bytes against the same, side by side;
``--json F`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bench.memory_procs import (
    MB,
    Sampler,
    free_port,
    import_baseline_mb,
    mem_available_mb,
    process_tree,
    tree_memory,
    wait_until,
)

HELP = "resident memory of the service, the trainer and the board during a burst"

# What the service's two processes import before they load anything (import baselines): the
# front (HTTP, tokenizer, store: no torch) and the engine child (the ExecuTorch runtime).
FRONT_IMPORTS = ("agent.services.inference.service",)
ENGINE_IMPORTS = ("agent.io.engine_child", "agent.io.runtime")


# slices per train call by mode, from q (agent/core/zo.py): MeZO 1, P-RGE q, P-RGE dual 2q
_SLICES: dict[str, Callable[[int], int]] = {
    "mezo": lambda q: 1, "prge": lambda q: q, "prge-dual": lambda q: 2 * q}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", type=Path, nargs="+",
                        help="model bundles (one per scheme: fp32, 8da8w, ...)")
    parser.add_argument("--steps", type=int, default=3, help="P-RGE steps of each burst")
    parser.add_argument("--mode", choices=tuple(_SLICES), default="prge-dual",
                        help="the trainer's mode (mezo fits a bundle with only 1 x b shapes)")
    parser.add_argument("--q", type=int, default=2, help="queries per step")
    parser.add_argument("--batch", type=int, default=2, help="sequences per query")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads, both")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")


def as_on_the_board(argv: list[str]) -> list[str]:
    """``argv`` run without CAP_IPC_LOCK, as the systemd units run the service and the trainer
    (``User=mobizo``, an empty ``CapabilityBoundingSet=``).

    The ExecuTorch runtime ``mlock``s the weights file it maps; a root benchmark process would
    pin what a board's unprivileged process cannot (its ``RLIMIT_MEMLOCK`` is 8 MiB), and the
    numbers would not be the board's. Unchanged where we are not root or ``setpriv`` is missing.
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return argv
    return [setpriv, "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", *argv]


class _Service:
    """``mobizo-agent serve`` in a child process, with a client for its API."""

    def __init__(self, bundle: Path, state: Path, threads: int | None) -> None:
        from agent.io.http import Client

        port = free_port()
        argv = [sys.executable, "-m", "agent", "serve", "--bundle", str(bundle), "--state-dir",
                str(state), "--listen", f"127.0.0.1:{port}", "--no-capture"]
        if threads:
            argv += ["--threads", str(threads)]
        self.log = (state.parent / "serve.log").open("w")
        self.proc = subprocess.Popen(as_on_the_board(argv), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.client = Client.from_url(f"http://127.0.0.1:{port}", timeout=300,
                                      token_file=state / "inference.token")

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}); see "
                                   f"{self.log.name}")
            try:
                return bool(self.client.health().get("status") == "ok")
            except (OSError, ValueError):
                return False

        wait_until(up, 300, "the service answering /health", 0.2)

    def ask(self) -> float:
        """Milliseconds one short greedy completion takes."""
        t0 = time.perf_counter()
        reply = self.client.complete("my bike is", max_tokens=8, temperature=0)
        if reply.status != 200:
            raise RuntimeError(f"the service answered {reply.status}: {reply.text[:300]}")
        return (time.perf_counter() - t0) * 1000

    def resident(self, resident: bool) -> None:
        reply = self.client.set_program_resident(resident)
        if reply.status != 200:
            raise RuntimeError(f"/v1/admin/program answered {reply.status}: {reply.text[:300]}")

    def program(self) -> dict[str, Any]:
        return dict(self.client.health()["program"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _burst(svc: _Service, bundle: Path, data: Path, out: Path, args: argparse.Namespace,
           *, ask_during: bool) -> dict[str, Any]:
    """One trainer run beside the service; the board's peaks, and a request during it."""
    argv = [sys.executable, "-m", "agent", "train", "--bundle", str(bundle), "--data", str(data),
            "--out", str(out), "--steps", str(args.steps), "--q", str(args.q), "--batch",
            str(args.batch), "--mode", args.mode, "--heldout-share", "0", "--no-eval",
            "--progress", "json"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    log_path = out.with_suffix(".log")
    with log_path.open("w") as log:
        trainer = subprocess.Popen(as_on_the_board(argv), stdout=subprocess.PIPE, stderr=log,
                                   text=True)
    # the service's tree: its front, and its engine child whenever one runs
    sampler = Sampler(lambda: (*process_tree(svc.proc.pid), trainer.pid)).start()
    stepped = threading.Event()

    def read() -> None:
        assert trainer.stdout is not None
        for line in trainer.stdout:
            if '"step"' in line:
                stepped.set()
        stepped.set()  # it exited: nothing more to wait for

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out_row: dict[str, Any] = {}
    if ask_during and stepped.wait(600) and trainer.poll() is None:
        sampler.sample()
        out_row["board_pss_mb"] = sampler.peak_pss_mb  # the burst before the request
        out_row["board_rss_mb"] = sampler.peak_rss_mb
        out_row["service_side_pss_mb"] = sum(  # the two sides of the board, before it
            v for pid, v in sampler.peak_pss_by_pid.items() if pid != trainer.pid)
        out_row["trainer_side_pss_mb"] = sampler.peak_pss_by_pid.get(trainer.pid, 0.0)
        out_row["request_during_ms"] = svc.ask()
        out_row["program_load_s"] = svc.program().get("last_load_s")
    _, status, usage = os.wait4(trainer.pid, 0)
    trainer.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    sampler.stop()
    if trainer.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"the trainer exited {trainer.returncode} on {bundle}: {tail[0]}")
    out_row.setdefault("board_pss_mb", sampler.peak_pss_mb)
    out_row.setdefault("board_rss_mb", sampler.peak_rss_mb)
    out_row.update(trainer_peak_mb=usage.ru_maxrss / 1024, overall_pss_mb=sampler.peak_pss_mb,
                   trainer_peak_pss_mb=sampler.peak_pss_by_pid.get(trainer.pid, 0.0),
                   min_available_mb=sampler.min_available_mb)
    return out_row


def _one_process_mb(bundle: Path, args: argparse.Namespace) -> float:
    """RSS of one process holding the infer program and the burst's train method, each run
    once (the trainer's shape: ``--mode``'s slices of ``--batch`` sequences)."""
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from agent.io.runtime import InferProgram, TrainProgram\n"
        "b = Path(sys.argv[1])\n"
        "inf = InferProgram(b)\n"
        f"tr = TrainProgram(b, slices={_SLICES[args.mode](args.q)}, batch={args.batch})\n"
        "inf.forward([1, 2, 3], 0, np.zeros(tr.manifest.lora.num_params, np.float32))\n"
        "import torch\n"
        "t = torch.ones(tr.batch, tr.max_length, dtype=torch.long)\n"
        "tr.losses(t, torch.ones_like(t, dtype=torch.float32), "
        "torch.zeros(tr.slices, tr.num_params))\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    out = subprocess.run(as_on_the_board([sys.executable, "-c", code, str(bundle)]),
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the one-process probe failed: {out.stderr.strip()[-500:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024


# Bytes per quantized weight (the base linears and the LM head): int8 per-channel for 8da8w;
# int4 in groups of 32 with a 4-byte scale each for 8da4w (its int8 head is counted as int4:
# the difference is under 2 % of the total on the 110M shape).
_QUANT_BYTES = {"none": 4.0, "8da8w": 1.0, "8da4w": 0.5 + 4 / 32}


def weight_bytes(bundle: Path) -> tuple[int, str]:
    """The bytes of the model's weights in the bundle's scheme, and how they were counted.

    fp32: 4 bytes per parameter. Quantized: the base linears and the LM head at the scheme's
    width (:data:`_QUANT_BYTES`), the embedding and norms in fp32.
    """
    from agent.io.bundle_files import read_manifest

    m = read_manifest(bundle)
    if m.quantize == "none":
        return m.model.num_params * 4, "4 bytes per parameter"
    s = m.model
    q_out, kv_out = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    per_layer = (2 * s.hidden_size * q_out + 2 * s.hidden_size * kv_out
                 + 3 * s.hidden_size * s.intermediate_size)
    linear = s.num_layers * per_layer + s.vocab_size * s.hidden_size
    other = max(0, s.num_params - linear)
    return int(linear * _QUANT_BYTES[m.quantize] + other * 4), \
        f"{m.quantize} linears + fp32 embedding and norms"


def bundle_bytes(bundle: Path) -> int:
    """Every file of the bundle (programs, weights, tokenizer, manifest)."""
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def measure(bundle: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every number of one bundle (module docstring), in MB and ms."""
    from agent.io.bundle_files import read_manifest
    from agent.training.sample_data import constant_response_rows, write_jsonl

    scheme = read_manifest(bundle).quantize
    weights, basis = weight_bytes(bundle)
    data = write_jsonl(work / "data.jsonl", constant_response_rows(32))
    (work / "state").mkdir(parents=True, exist_ok=True)
    available0 = mem_available_mb()
    svc = _Service(bundle, work / "state", args.threads)
    try:
        svc.ask()
        warm_ms = min(svc.ask() for _ in range(3))
        alone = tree_memory(svc.proc.pid)
        svc.resident(False)
        released = tree_memory(svc.proc.pid)
        release = _burst(svc, bundle, data, work / "release", args, ask_during=True)
        svc.resident(True)
        keep = _burst(svc, bundle, data, work / "keep", args, ask_during=True)
    finally:
        svc.stop()
    return {
        "bundle": str(bundle), "scheme": scheme, "weights_mb": weights / MB,
        "weights_basis": basis, "bundle_mb": bundle_bytes(bundle) / MB,
        "import_baseline_mb": import_baseline_mb(sys.executable, FRONT_IMPORTS),
        "engine_import_baseline_mb": import_baseline_mb(sys.executable, ENGINE_IMPORTS),
        "service": alone["total"].as_dict(), "service_front": alone["front"].as_dict(),
        "service_engine": alone["engine"].as_dict(),
        "service_released": released["total"].as_dict(),
        "trainer_peak_mb": release["trainer_peak_mb"],
        "trainer_peak_pss_mb": release["trainer_peak_pss_mb"],
        "burst_released": release, "burst_kept": keep,
        "memavailable_drop_mb": available0 - release["min_available_mb"],
        "memavailable_drop_kept_mb": available0 - keep["min_available_mb"],
        "warm_request_ms": warm_ms,
        "request_during_burst_ms": release.get("request_during_ms"),
        "request_during_kept_burst_ms": keep.get("request_during_ms"),
        "one_process_mb": _one_process_mb(bundle, args),
    }


def ratios(row: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one bundle against its weight bytes (and the burst against serving)."""
    w = row["weights_mb"]
    svc = row["service"]["pss_mb"]
    during = row["request_during_burst_ms"]
    return {
        "service / weights": svc / w,
        "trainer peak Pss / weights": row["trainer_peak_pss_mb"] / w,
        "board, released / weights": row["burst_released"]["board_pss_mb"] / w,
        "board, kept / weights": row["burst_kept"]["board_pss_mb"] / w,
        "board, released / service": row["burst_released"]["board_pss_mb"] / svc,
        "board, kept / service": row["burst_kept"]["board_pss_mb"] / svc,
        "one process / weights": row["one_process_mb"] / w,
        "bundle / weights": row["bundle_mb"] / w,
        "request in burst / warm": None if during is None else during / row["warm_request_ms"],
    }


def _print(rows: list[dict[str, Any]]) -> None:
    names = [f"{Path(r['bundle']).name} ({r['scheme']})" for r in rows]
    width = max(14, *(len(n) for n in names))
    print(f"{'':34}" + "".join(f"{n:>{width + 2}}" for n in names))
    lines: list[tuple[str, list[Any]]] = [
        ("weights MB", [r["weights_mb"] for r in rows]),
        ("front import baseline MB (RSS)", [r["import_baseline_mb"] for r in rows]),
        ("engine import baseline MB (RSS)", [r["engine_import_baseline_mb"] for r in rows]),
        ("service front Pss MB (1 request)", [r["service_front"]["pss_mb"] for r in rows]),
        ("service engine Pss MB", [r["service_engine"]["pss_mb"] for r in rows]),
        ("service Pss MB (front + engine)", [r["service"]["pss_mb"] for r in rows]),
        ("service Pss MB, released", [r["service_released"]["pss_mb"] for r in rows]),
        ("board in burst: service side MB",
         [r["burst_released"].get("service_side_pss_mb") for r in rows]),
        ("board in burst: trainer side MB",
         [r["burst_released"].get("trainer_side_pss_mb") for r in rows]),
        ("board in burst: both MB", [r["burst_released"]["board_pss_mb"] for r in rows]),
        ("trainer peak MB (RSS)", [r["trainer_peak_mb"] for r in rows]),
        ("trainer peak Pss MB (sampled)", [r["trainer_peak_pss_mb"] for r in rows]),
        ("MemAvailable drop MB (released)", [r["memavailable_drop_mb"] for r in rows]),
        ("warm request ms", [r["warm_request_ms"] for r in rows]),
        ("request during burst ms", [r["request_during_burst_ms"] for r in rows]),
        ("  same, program kept ms", [r["request_during_kept_burst_ms"] for r in rows]),
        ("  program load s", [r["burst_released"].get("program_load_s") for r in rows]),
    ]
    table = [ratios(r) for r in rows]
    lines += [(name, [t[name] for t in table]) for name in table[0]]
    for label, values in lines:
        cells = "".join(f"{'-' if v is None else f'{v:.2f}':>{width + 2}}" for v in values)
        print(f"{label:34}{cells}")


def main(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobizo-memory-") as tmp:
        root = args.workdir or Path(tmp)
        for k, bundle in enumerate(args.bundles):
            rows.append(measure(bundle, root / f"b{k}", args))
    _print(rows)
    if args.json is not None:
        doc = {"bundles": [dict(r, ratios=ratios(r)) for r in rows]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0

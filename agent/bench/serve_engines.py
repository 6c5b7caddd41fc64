"""``mobizo-bench serve --bundle B --engines inline,process``: where the program runs, side by
side in one run (agent/io/engine.py).

For each engine the same service (HTTP front, store off, the bundle's own two adapters) is
started; then, through HTTP, prompt and decode tokens/s (distinct prompts: no prompt-cache
hits; agent/bench/serve_common.py ``http_speeds``) and ``--switches`` adapter switches while a
client keeps generating (``switches_under_load``: every switch's p99, the control request's,
the swap alone, failed requests). ``inline`` is the program in the service process, as
before the engine child; ``process`` is the default. The issue's target: switch p99 < 50 ms
with 0 failed requests, and decode and prompt speed within noise of ``inline``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from agent.bench.serve_common import http_speeds, switches_under_load, write_adapters

ENGINES = ("inline", "process")


def parse_engines(text: str) -> tuple[str, ...]:
    """``inline,process`` → the engines to compare, in that order (argparse type)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {', '.join(bad) or '(none)'}: "
                                         f"give a comma-separated subset of {','.join(ENGINES)}")
    return names


def measure(bundle: Path, engine: str, *, prompt_tokens: int, gen_tokens: int, repeats: int,
            switches: int, threads: int | None) -> dict[str, Any]:
    """One engine's speeds and switch latencies through HTTP."""
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.http import Client
    from agent.io.store import StoreConfig
    from agent.services.inference.service import InferenceService, ServeConfig

    work = Path(tempfile.mkdtemp(prefix=f"mobizo-bench-engine-{engine}-"))
    write_adapters(work, AdapterValidator(bundle), count=2)
    config = ServeConfig.model_validate({
        "listen": "127.0.0.1:0", "threads": threads, "watch_interval_s": 0.01,
        "engine": engine, "store": StoreConfig(capture=False)})
    svc = InferenceService(bundle, work / "state", config)
    versions = [svc.registry.publish(work / f"a{k}", activate=False) for k in range(2)]
    svc.registry.activate(versions[0])
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        client.post("/v1/admin/reload-adapter")
        speeds = http_speeds(client, prompt_tokens, gen_tokens, repeats, svc)
        switch = switches_under_load(svc, client, versions, switches)
        load_s = svc.program.last_load_s
    finally:
        svc.stop()
    return {"engine": engine, "speeds": speeds, "switch": switch, "load_s": load_s,
            "runtime_threads": svc.runtime_threads}


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per engine: the figures the issue sets targets on."""
    lines = ["| engine | prompt tok/s | decode tok/s | every switch p50 / p99 ms | control "
             "p99 ms | swap alone p99 ms | requests / failed | load s | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, w = r["speeds"], r["switch"]
        lines.append(
            f"| {r['engine']} | {s['prompt_tok_s']:.0f} | {s['gen_tok_s']:.1f} | "
            f"{w['all_p50_ms']:.1f} / {w['all_p99_ms']:.1f} | {w['control_p99_ms']:.1f} | "
            f"{w['swap_only_p99_ms']:.1f} | {w['requests_during']} / {w['failed_requests']} | "
            f"{r['load_s']:.2f} | {w['load_avg_1m']:.1f} |")
    last = rows[-1]["switch"]
    ok = last["all_p99_ms"] < 50 and last["failed_requests"] == 0
    lines.append(f"target ({rows[-1]['engine']}): switch p99 < 50 ms over {last['switches']} "
                 f"switches, 0 failed: {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Measure ``args.engines`` on ``args.bundle``; 0 when the last one meets the target."""
    from agent.errors import BundleError

    if args.bundle is None:
        raise BundleError("--engines compares engines on one bundle: give --bundle DIR")
    rows = [measure(args.bundle, engine, prompt_tokens=args.prompt_tokens,
                    gen_tokens=args.gen_tokens, repeats=args.repeats, switches=args.switches,
                    threads=args.threads) for engine in args.engines]
    print(f"bundle {args.bundle}  prompt {args.prompt_tokens} tok  gen {args.gen_tokens} tok  "
          f"threads {args.threads or 'all'}  cpus {len(os.sched_getaffinity(0))}")
    print(format_table(rows))
    if args.out:
        args.out.write_text(json.dumps({"engines": rows}, indent=2))
    last = rows[-1]["switch"]
    return 0 if last["all_p99_ms"] < 50 and last["failed_requests"] == 0 else 1

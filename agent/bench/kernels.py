"""``mobizo-bench kernels``: a model's base linears alone, per scheme, through XNNPACK.

Whether an 8da8w base makes a ZO step faster is decided by XNNPACK's int8 GEMM kernels, and
those depend on the CPU. With an int8 dot-product instruction — x86 AVX-512 VNNI or AVX-VNNI,
Arm ``asimddp``/``i8mm`` (the Pi 5's Cortex-A76, Orin's Cortex-A78AE) — an int8 multiply-add
does 4× the work of an fp32 FMA per lane. With AVX2 alone, int8 is widened to 16 bits first and
runs at about fp32 speed. This benchmark answers the question for the machine it runs on,
before any model is exported: for each linear shape of a P-RGE step (rows = the 2q·b·T
tokens of one step; the LM head sees only the 2q·b·K target rows), it lowers one linear per
scheme (the exporter's own torchao configs and lowering), times them interleaved round by
round, and prints GFLOP/s, the ratio to fp32 and the CPU features that decide it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

HELP = "per-scheme speed of a model's base linears on this CPU (is int8 faster here?)"
# CPU features that decide int8 GEMM speed (x86 /proc/cpuinfo "flags", Arm "Features")
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "avx512bw", "avx2", "asimddp", "i8mm", "sve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from agent.bench.zo_quant import add_step_arguments

    add_step_arguments(p)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per linear and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best is kept)")
    p.add_argument("--json", type=Path, help="write the results as a JSON list here")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of :data:`INT8_FEATURES` this CPU reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    words: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    return [f for f in INT8_FEATURES if f in words]


def linear_shapes(shape: str, q: int, b: int, seq: int) -> dict[str, tuple[int, int, int]]:
    """``name -> (rows, in, out)`` of the distinct base linears of one P-RGE dual step."""
    from agent.bench.zo import SHAPE_110M, response_targets
    from exporter.starter import STARTER_CONFIG, byte_tokenizer

    cfg = SHAPE_110M if shape == "110m" else dict(STARTER_CONFIG,
                                                  vocab_size=len(byte_tokenizer()))
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    rows = 2 * q * b * seq
    shapes = {"q_proj/o_proj": (rows, d, d), "gate_proj/up_proj": (rows, d, ff),
              "down_proj": (rows, ff, d), "lm_head": (2 * q * b * response_targets(seq), d,
                                                      cfg["vocab_size"])}
    if kv != d:
        shapes["k_proj/v_proj"] = (rows, d, kv)
    return shapes


def _method_name(name: str) -> str:
    return name.replace("/", "_")


def lower_linears(shapes: dict[str, tuple[int, int, int]], scheme: str, out: Path) -> Path:
    """One ``.pte`` with a method per shape: a bias-free linear quantized with ``scheme``."""
    import torch
    from torch import nn

    from exporter.lower import lower_methods
    from exporter.quantize import config_for

    methods = {}
    for name, (rows, fan_in, fan_out) in shapes.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            linear = nn.Sequential(nn.Linear(fan_in, fan_out, bias=False))
        if scheme != "none":
            from torchao.quantization import quantize_

            quantize_(linear, config_for(scheme))
        methods[_method_name(name)] = (linear, (torch.randn(rows, fan_in),))
    lower_methods(methods, out, backend="xnnpack")
    return out


def measure(shapes: dict[str, tuple[int, int, int]], schemes: list[str], repeats: int,
            rounds: int, workdir: Path) -> list[dict]:
    import torch
    from executorch.runtime import Runtime

    programs = {s: Runtime.get().load_program(lower_linears(shapes, s, workdir / f"{s}.pte"))
                for s in schemes}
    results = []
    for name, (rows, fan_in, fan_out) in shapes.items():
        x = torch.randn(rows, fan_in)
        methods = {s: p.load_method(_method_name(name)) for s, p in programs.items()}
        best = {s: float("inf") for s in schemes}
        for _ in range(rounds):  # interleaved: load drift hits every scheme alike
            for s, m in methods.items():
                m.execute([x])  # warm-up: packing, first-touch
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    m.execute([x])
                    times.append(time.perf_counter() - t0)
                best[s] = min(best[s], statistics.median(times))
        flops = 2.0 * rows * fan_in * fan_out
        for s in schemes:
            results.append({"linear": name, "rows": rows, "in": fan_in, "out": fan_out,
                            "scheme": s, "seconds": best[s], "gflops": flops / best[s] / 1e9,
                            "speedup_vs_fp32": best.get("none", float("nan")) / best[s]})
    return results


def main(args: argparse.Namespace) -> int:
    shapes = linear_shapes(args.shape, args.q, args.batch, args.seq)
    features = cpu_features()
    print(f"CPU: {platform.machine()} {platform.processor() or ''} int8-relevant features: "
          f"{', '.join(features) or 'none reported'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mobizo-kernels-") as tmp:
        results = measure(shapes, list(args.schemes), args.repeats, args.rounds, Path(tmp))
    for r in results:
        r["cpu_features"] = features
        print(f"{r['linear']:>18} [{r['rows']}x{r['in']}] x [{r['in']}x{r['out']}] "
              f"{r['scheme']:>6}: {r['seconds'] * 1e3:8.2f} ms  {r['gflops']:6.1f} GFLOP/s  "
              f"x{r['speedup_vs_fp32']:.2f} vs fp32", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0

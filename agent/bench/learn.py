"""``mobizo-bench learn``: does personalization work, and is P-RGE better than MeZO? (issue 7)

Generated tasks with a known right answer (agent/bench/tasks: personal facts, reply style, label
words) or a user's own ``--data FILE.jsonl``; every method trains from the same start (the
bundle's initial adapter, same seed) on the same budget of forward passes:

- MeZO (q=1, b=16), P-RGE dual (q=4, b=4), P-RGE dual (q=16, b=1): the bundle's ExecuTorch
  train program, agent.core.zo;
- first-order LoRA: eager autograd on B (A frozen), Adam, the memory-hungry reference.

Reported per (task, method): held-out loss on response tokens at the start and end, accuracy
(label words: the label word with the lowest CE through the train program; other tasks:
greedy exact match, computed as a teacher-forced argmax match on the eager twin of the
program), forwards, training seconds, the seconds to reach MeZO's final loss, and the loss at
equal wall-clock; a table, ``--json`` and a ``--plot`` PNG. Without ``--bundle`` the starter
preset is exported with the shapes the methods need and cached under ``--cache-dir``.

Determinism: data, perturbations and batches are pure functions of the seed and the step, and
the programs are deterministic on CPU, so a rerun reproduces every loss and accuracy; only
the seconds vary. PyTorch runs single-threaded (``--threads``): with two OpenMP threads on
a busy 2-core machine the eager forward was 5–7x slower (spin-waiting), not just noisier.

Findings (starter preset: random weights, 4 layers, hidden 256, T = 80; ``--quick`` = 768
forwards per method; a 2-core machine shared with other jobs (load 7-10), so the seconds are
indicative; every ratio below comes from one run):

- Default adapter: LoRA r = 32 on the last 2 of the 4 layers (131k B values), lr 1e-2 and
  ε 1e-2 for every ZO method alike. Why, from eager sweeps (the eager twin gives the train
  program's losses to 1e-5) and the first two rows' ExecuTorch runs; 768 forwards, seed 0,
  held-out finals facts / style / labels:

  | adapter            | MeZO q1 b16       | P-RGE q4 b4       | q4 reaches it at (forwards)|
  |--------------------|-------------------|-------------------|----------------------------|
  | all 4 layers, r16  | 5.486 5.293 5.456 | 5.210 5.115 4.915 | 0.38 / 0.63 / 0.25         |
  | last 1, r16        | 5.569 5.458 5.272 | 5.458 5.445 5.279 | 0.75 / 1.00 / never        |
  | last 2, r16        | 5.414 5.416 5.174 | 5.373 5.254 5.053 | 1.00 / 0.63 / 0.88         |
  | last 2, r32        | 5.391 5.405 5.322 | 5.162 5.103 4.950 | 0.50 / 0.38 / 0.25         |
  | last 2, r32, seed 1| 5.450 5.422 5.297 | 5.161 5.119 4.998 | 0.38 / 0.25 / 0.50         |
  | last 2, r32, lr 5e-3| 5.438 5.347 5.329| 5.325 5.249 5.021 | 0.63 / 0.75 / 0.50         |

  - Prefix sharing: with LoRA on the last k layers a P-RGE dual step runs the frozen prefix
    once on its b sequences; MeZO (S = 1) runs its whole forward twice. On all layers a
    P-RGE q4 step cost 1.07-1.16x a MeZO step, so it can only win by learning more per
    forward; on the last half it cost 0.67x (CPU time of the program calls, below).
  - Per forward, P-RGE's edge over MeZO grows with the number of trainable values (the ZO
    variance grows with d/q and q averages it down): a tie at 33k (last 1, r16), a clear lead
    at 131k (all layers r16, or last 2 r32).
  - Fair to MeZO: on last 2 r32 MeZO's summed final is the same at lr 1e-2 and 5e-3 (16.12 vs
    16.11), so 1e-2 does not handicap it, while P-RGE q4 is better at 1e-2 (15.22 vs 15.60).
    MeZO's best adapter of those tried is last 2 r16 (16.00): rank 32 costs MeZO 0.7% and gives
    P-RGE 3%, which is the paper's point (more queries make more trainable values usable).
- The defaults through ExecuTorch (``--quick``; t = seconds for P-RGE q4 to reach MeZO's
  final loss over MeZO's seconds; every target met in every run):

  | run                     | MeZO final        | P-RGE q4 final    | t / MeZO s         |
  |-------------------------|-------------------|-------------------|--------------------|
  | seed 0, 12 eval points  | 5.391 5.405 5.322 | 5.162 5.103 4.950 | 0.28 / 0.27 / 0.11 |
  | seed 0, 8 eval points   | (same losses)     | (same losses)     | 0.44 / 0.49 / 0.22 |
  | seed 1, 12 eval points  | 5.450 5.422 5.297 | 5.161 5.119 4.998 | 0.22 / 0.16 / 0.32 |

  The spread of the ratios is the machine's load (a MeZO step took 0.55-1.32 s across runs);
  a microbenchmark of the program calls put a P-RGE q4 step at 0.67x a MeZO step's CPU time
  (q16: 0.53x). ``--quantize 8da8w`` (seed 0) ends within 0.1% of fp32 for every ZO method
  and task (issue 8's target: 2%).
- lr: the paper's 1e-4 barely moves B from zero on this model (all layers r16, MeZO 30 steps:
  5.83 → 5.55 at 1e-3, 5.39 at 1e-2, 5.54 at 1e-1, noisy). ε 1e-2 is the paper's and the
  floor of a quantized base (agent/core/quant_guard.py). First-order Adam lr 1e-3.
- Equal forwards: P-RGE dual q=4 b=4 and q=16 b=1 end below MeZO q=1 b=16 on every task and
  every adapter except last-1 (a tie); first-order LoRA is far ahead of all ZO methods per
  forward.
- Accuracy: greedy exact match stays 0 for every method within the quick budget (random
  weights); label-words accuracy stays at chance (0.50) for ZO: the ZO gains so far are the
  label/response token distribution, not the conditional mapping.
- ``--eval-points`` 12 (every 2 ZO steps in ``--quick``): ``seconds_to_mezo_final`` is read at
  evaluations, so it is an upper bound with that resolution; at 8 points (every 3 steps) a
  crossing could be late by 12% of the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from agent.bench.learn_methods import (
    DEFAULT_FO_LR,
    DEFAULT_ZO_EPS,
    DEFAULT_ZO_LR,
    MethodSpec,
    default_methods,
    parse_method,
)
from agent.bench.learn_quant import SCHEMES
from agent.bench.learn_setup import Programs, checked_bundle, datasets_for, eager_twin
from agent.errors import MobizoError

log = logging.getLogger(__name__)

HELP = "learning quality: MeZO vs P-RGE vs first-order LoRA on generated tasks or your data"

QUICK_FORWARDS = 768  # 24 ZO steps of 32 forwards, 48 first-order steps of 16
FULL_FORWARDS = 6400  # 200 ZO steps
DEFAULT_TASKS = ("personal-facts", "reply-style", "label-words")
# The starter's default adapter (the module notes say why): LoRA on the last half of its four
# layers, so P-RGE's frozen prefix runs once per step, with rank 32 (65k -> 131k trainable
# values, the same count as rank 16 on every layer).
DEFAULT_LORA_LAYERS = "last-2"
DEFAULT_RANK = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle (default: export the starter preset, cached)")
    parser.add_argument("--data", type=Path, default=None,
                        help="your own JSON Lines interactions instead of the generated tasks")
    parser.add_argument("--heldout-share", type=float, default=0.2,
                        help="held-out share of --data (split by content hash, as the trainer)")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma-separated generated tasks (default {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--methods", action="append", default=None, metavar="SPEC",
                        help="a method, e.g. 'mezo:q=1,b=16', 'prge-dual:q=4,b=4,lr=1e-2', "
                        "'fo:b=16,opt=adam,lr=1e-3' (repeat; default: the issue's four)")
    parser.add_argument("--forwards", type=int, default=None,
                        help=f"forward passes per (task, method) (default {FULL_FORWARDS}, "
                        f"--quick {QUICK_FORWARDS})")
    parser.add_argument("--quick", action="store_true",
                        help="reduced budget: same tasks and methods, fewer steps")
    parser.add_argument("--lr", type=float, default=DEFAULT_ZO_LR, help="ZO learning rate")
    parser.add_argument("--eps", type=float, default=DEFAULT_ZO_EPS, help="ZO perturbation ε")
    parser.add_argument("--fo-lr", type=float, default=DEFAULT_FO_LR,
                        help="first-order (Adam) learning rate")
    parser.add_argument("--eval-points", type=int, default=12,
                        help="held-out evaluations per run besides the start (the resolution "
                        "of seconds_to_mezo_final: --quick evaluates every 2 ZO steps)")
    parser.add_argument("--seed", type=int, default=0, help="task, data-order and ZO seed")
    parser.add_argument("--train-size", type=int, default=64, help="train examples per task")
    parser.add_argument("--heldout-size", type=int, default=24, help="held-out examples per task")
    parser.add_argument("--backend", choices=["executorch", "eager"], default="executorch",
                        help="ZO programs: the bundle's train.pte or the eager reference")
    parser.add_argument("--max-length", type=int, default=80,
                        help="train length T of the exported starter bundle")
    parser.add_argument("--lora-layers", default=DEFAULT_LORA_LAYERS,
                        help="LoRA'd layers of the exported starter bundle (all | last-K; "
                        f"default {DEFAULT_LORA_LAYERS}: the last half, see the module notes)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK,
                        help=f"LoRA rank of the starter bundle (default {DEFAULT_RANK})")
    parser.add_argument("--quantize", choices=SCHEMES, default=None,
                        help="base-linear quantization of the exported starter bundle (issue 8: "
                        "int8 activations x int8 / int4 weights; LoRA stays fp32); default none. "
                        "With --bundle it must match the bundle's own scheme")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/learn"),
                        help="where the exported starter bundle is cached")
    parser.add_argument("--eval-margin", type=float, default=None,
                        help="eval-gate margin (default: the [adapters] default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch threads for the eager model (first-order baseline and "
                        "argmax match); 1 keeps its order deterministic and avoids OpenMP spin "
                        "collapse on a busy 2-core machine. ExecuTorch's pool is process-wide: "
                        "pin the whole run with taskset to compare on one core")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")


def build_methods(args: argparse.Namespace) -> list[MethodSpec]:
    if not args.methods:
        return default_methods(args.lr, args.eps, args.fo_lr)
    return [parse_method(m, zo_lr=args.lr, eps=args.eps, fo_lr=args.fo_lr)
            for spec in args.methods for m in _split_specs(spec)]


def _split_specs(text: str) -> list[str]:
    """Split ``a:q=1,b=2;b:...`` — several specs in one argument, separated by ';'."""
    return [s for s in (p.strip() for p in text.split(";")) if s]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON document."""
    import torch

    from agent.bench.learn_report import check_targets, result_objects
    from agent.config.adapters import AdaptersConfig
    from agent.core.bundle import ADAPTER_DIR
    from agent.io.adapter_fs import AdapterValidator
    from agent.training.tokenize import load_tokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, args.threads))
    methods = build_methods(args)
    budget = args.forwards or (QUICK_FORWARDS if args.quick else FULL_FORWARDS)
    bundle, manifest = checked_bundle(args, methods)
    tokenizer = load_tokenizer(bundle, manifest.tokenizer.path)
    pad_id = manifest.tokenizer.pad_token_id
    length = manifest.train.max_length
    init_b = AdapterValidator(bundle, manifest).load_flat_b(bundle / ADAPTER_DIR)
    eager, methods = eager_twin(bundle, manifest, methods)
    datasets = datasets_for(args, tokenizer, length, pad_id)
    programs = Programs(bundle, manifest, args.backend)
    evaluators = programs.for_eval()  # before the clock starts; ZO programs load when first used
    t_start = time.perf_counter()
    results = _run_methods(args, programs, evaluators, methods, datasets, init_b, eager, budget)
    adapters_cfg = AdaptersConfig()
    margin = adapters_cfg.eval_margin if args.eval_margin is None else args.eval_margin
    objs = result_objects(results, margin=margin, margin_mode=adapters_cfg.eval_margin_mode)
    return {
        "meta": {
            "bundle": str(bundle), "bundle_id": manifest.bundle_id,
            "random_weights": manifest.base.random_weights, "budget_forwards": budget,
            "quantize": manifest.quantize,
            "quick": bool(args.quick), "seed": args.seed, "backend": args.backend,
            "lora": {"rank": manifest.lora.rank, "layers": list(manifest.lora.layers),
                     "num_params": manifest.lora.num_params},
            "max_length": length, "eval_margin": margin,
            "eval_margin_mode": adapters_cfg.eval_margin_mode,
            "accuracy": "label-words: lowest label-word CE through the train program; other "
                        "tasks: greedy exact match via teacher-forced argmax (eager twin)",
            "total_seconds": time.perf_counter() - t_start,
            "threads": torch.get_num_threads(),
        },
        "results": objs,
        "targets": check_targets(objs),
        "_runs": results,
    }


def _run_methods(args: argparse.Namespace, programs: Programs, evaluators: tuple[Any, Any],
                 methods: list[MethodSpec], datasets: list[Any], init_b: Any, eager: Any,
                 budget: int) -> list[Any]:
    """Every method on every dataset, from the same initial B; logs each held-out loss."""
    from agent.bench.learn_run import Evaluator, run_method

    pad_id = programs.manifest.tokenizer.pad_token_id
    length = programs.manifest.train.max_length
    results = []
    for data in datasets:
        if data.truncated:
            log.warning("%s: %d examples truncated to %d tokens", data.name, data.truncated,
                        length)
        evaluator = Evaluator(data, *evaluators, eager, pad_id)
        for m in methods:
            r = run_method(m, data, init_b, evaluator, budget_forwards=budget,
                           eval_points=args.eval_points, seed=args.seed,
                           program=programs.for_method(m), eager=eager)
            log.info("%s %s: held-out %.3f -> %.3f in %.1fs", data.name, m.name,
                     r.start.loss, r.final.loss, r.final.seconds)
            print(f"  {data.name:15s} {m.name:20s} held-out {r.start.loss:.3f} -> "
                  f"{r.final.loss:.3f}  ({r.final.seconds:.1f}s)", file=sys.stderr, flush=True)
            results.append(r)
    return results


def main(args: argparse.Namespace) -> int:
    from agent.bench.learn_plot import plot_results
    from agent.bench.learn_report import table, targets_text

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        doc = run(args)
    except (MobizoError, ValueError) as exc:
        print(f"mobizo-bench learn: {exc}", file=sys.stderr)
        return 2
    runs = doc.pop("_runs")
    print(table(doc["results"]))
    print()
    print(targets_text(doc["targets"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    if args.plot is not None:
        meta = doc["meta"]
        lora = meta["lora"]
        title = (f"held-out loss, {meta['budget_forwards']} forwards per method, seed "
                 f"{meta['seed']}, LoRA r={lora['rank']} on layers {lora['layers']}"
                 f"{'' if meta['quantize'] == 'none' else ', base ' + meta['quantize']}"
                 f"{' (random-weight starter)' if meta['random_weights'] else ''}")
        plot_results(runs, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":  # python -m agent.bench.learn ...
    _p = argparse.ArgumentParser(prog="mobizo-bench learn", description=HELP)
    add_arguments(_p)
    raise SystemExit(main(_p.parse_args()))

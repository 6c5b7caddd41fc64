"""``mobizo-bench serve --vs-llamacpp``: which bundles, then the run, the table and the JSON.

Bundles: ``--bundle`` (any scheme, read from its manifest), ``--bundle-8da8w`` and
``--bundle-8da4w`` reuse exported bundles; every scheme of ``--quantize`` that no path gives
is exported once into ``--workdir`` at ``--shape`` (the 110M shape takes minutes per scheme).
Without either: ``--quantize none,8da8w,8da4w``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.bench.serve_bundles import serve_bundle
from agent.core.bundle import QuantScheme
from agent.errors import BundleError

DEFAULT_SCHEMES: tuple[QuantScheme, ...] = ("none", "8da8w", "8da4w")
# prompt + generation and the multi-turn conversation fit with room to spare
SERVE_CONTEXT = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--vs-llamacpp`` options (beside ``mobizo-bench serve``'s own)."""
    g = parser.add_argument_group("--vs-llamacpp (issue 18: our service beside llama.cpp)")
    g.add_argument("--vs-llamacpp", action="store_true",
                   help="compare with llama.cpp on the same weights as GGUF (f32/q8_0/q4_0 "
                        "beside fp32/8da8w/8da4w); needs pip install -e '.[llamacpp]'")
    g.add_argument("--shape", choices=["starter", "110m"], default="starter",
                   help="what --quantize exports: the starter preset or the random-weight "
                        "110M Llama shape (minutes per scheme, kept in --workdir)")
    g.add_argument("--bundle-8da8w", type=Path, default=None, help="reuse this 8da8w bundle")
    g.add_argument("--bundle-8da4w", type=Path, default=None, help="reuse this 8da4w bundle")
    g.add_argument("--turns", type=int, default=6, help="messages before the follow-up turn")
    g.add_argument("--conversation-tokens", type=int, default=750,
                   help="about how long the multi-turn conversation is")
    g.add_argument("--long-context", type=int, default=800,
                   help="prompt tokens before the deep-context decode row (0: skip it)")
    g.add_argument("--ttft-repeats", type=int, default=2,
                   help="cold + follow-up turns timed per engine (median)")
    g.add_argument("--parity-steps", type=int, default=8,
                   help="decode steps whose logits are compared (fp32 vs f32)")


def resolve_bundles(args: argparse.Namespace) -> dict[QuantScheme, Path]:
    """{scheme: bundle} from the paths given, exporting the rest of ``--quantize``."""
    from agent.io.bundle_files import read_manifest

    given: dict[QuantScheme, Path] = {}
    if args.bundle is not None:
        given[read_manifest(args.bundle).quantize] = args.bundle
    for scheme, path in (("8da8w", args.bundle_8da8w), ("8da4w", args.bundle_8da4w)):
        if path is None:
            continue
        found = read_manifest(path).quantize
        if found != scheme:
            raise BundleError(f"--bundle-{scheme} {path} is a {found!r} bundle; give a "
                              f"{scheme} bundle (or pass it as --bundle)")
        given[scheme] = path  # type: ignore[index]
    wanted = args.quantize if args.quantize is not None else (
        DEFAULT_SCHEMES if not given else ())
    bundles = {s: given.get(s) or serve_bundle(args.workdir, args.shape, s, SERVE_CONTEXT)
               for s in wanted}
    bundles.update({s: p for s, p in given.items() if s not in bundles})
    order = {s: i for i, s in enumerate(DEFAULT_SCHEMES)}
    return dict(sorted(bundles.items(), key=lambda kv: order[kv[0]]))


def main(args: argparse.Namespace) -> int:
    from agent.bench.llamacpp import llama_cpp_module
    from agent.bench.serve_vs_llamacpp import VsOptions, run
    from agent.bench.serve_vs_table import format_vs_table, targets

    llama_cpp_module()  # say how to install it before minutes of export
    bundles = resolve_bundles(args)
    opts = VsOptions(workdir=args.workdir, threads=args.threads or 2,
                     prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                     repeats=args.repeats, switches=args.switches, turns=args.turns,
                     conversation_tokens=args.conversation_tokens,
                     parity_steps=args.parity_steps, ttft_repeats=args.ttft_repeats,
                     long_context=args.long_context)
    results = run(bundles, opts, partial=args.out)
    results["targets"] = targets(results)
    print(format_vs_table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if all(results["targets"].values()) else 1

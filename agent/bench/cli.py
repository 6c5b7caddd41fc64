"""``mobizo-bench``: benchmarks, one module per subcommand (``agent.bench.<name>``).

Each module defines ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``, like the
``mobizo-agent`` subcommands; modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agent.cli.lazy import add_lazy_subcommands
from agent.errors import MobizoError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "zo": ("agent.bench.zo", "P-RGE vs MeZO vs plain forward vs eager: time and peak memory"),
    "serve": ("agent.bench.serve", "inference service: generation speed and adapter swap"),
    "host": ("agent.bench.host_overhead",
             "per-token host time (sampling, detokenizing, stops) vs the decode step"),
    "decode-profile": ("agent.bench.decode_profile",
                       "op-by-op time of a bundle's decode and prefill (ExecuTorch ETDump)"),
    "learn": ("agent.bench.learn", "does ZO fine-tuning learn: held-out loss over steps"),
    "zo-quant": ("agent.bench.zo_quant", "fp32 vs 8da8w vs 8da4w base: time, memory, fidelity"),
    "kernels": ("agent.bench.kernels", "per-scheme speed of the base linears on this CPU"),
    "daemon": ("agent.bench.daemon", "agent daemon footprint and time to the first ZO step"),
    "memory": ("agent.bench.memory",
               "resident memory of service, trainer and board during a burst vs the weights"),
    "fleet": ("agent.bench.fleet", "fleet link: commands/s, round-trip p50/p99, idle CPU and RSS"),
    "fleet-learn": ("agent.bench.fleet_learn",
                    "fleet learning on Flower: seeds + scalars vs local vs centralized P-RGE"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mobizo-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    module = add_lazy_subcommands(parser, SUBCOMMANDS, argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s")
    try:
        return int(module.main(args))
    except MobizoError as exc:
        print(f"mobizo-bench {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

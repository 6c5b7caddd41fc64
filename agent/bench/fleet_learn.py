"""``mobizo-bench fleet-learn``: does the fleet learn a shared adapter from seeds and scalars?

Issue 20's benchmark. N simulated devices (8; ``--quick`` 4) on the real ExecuTorch programs,
each with a slice of a shared task (one reply style for the whole fleet) and its own private
facts (agent/bench/fleet_sim.py). Side by side, with equal forward passes per device:
local-only P-RGE, federated P-RGE on Flower (seeds + scalars; each device starts every round
from the global adapter and serves it plus its round's own update, as the daemon does),
centralized P-RGE (all data on one device), and dense FedAvg of adapters (its loss, and its
bytes: float32 B up and down each round).

Reported: held-out loss on the shared task and on each device's private task, bytes up and
down per device per round, wall-clock per round, and a second federated run in which a
quarter of the fleet drops out mid-round. ``--fedkseed-pro`` adds a federated run with
FedKSeed-Pro's seed probabilities (key ``fedkseed_pro``, a curve and bars in the plot).
The JSON carries the issue's three headline keys, ``bytes_per_device_per_round``,
``federated_fraction_of_centralized`` and ``federated_beats_local_on_shared``, beside the
full tables.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from agent.bench.fleet_learn_run import (
    Fleet,
    Plan,
    run_centralized,
    run_fedavg,
    run_federated,
    run_local,
)
from agent.bench.fleet_sim import SPLITS, fleet_data, load_bundle
from agent.federated.privacy import epsilon

HELP = "fleet learning on Flower: federated vs local vs centralized P-RGE, bytes per round"
log = logging.getLogger(__name__)

FULL = {"devices": 8, "rounds": 10, "steps": 4}
QUICK = {"devices": 4, "rounds": 4, "steps": 3}
FEDKSEED_BYTES = 18_000  # Qin et al. 2024: "under 18 kilobytes" per round
STRETCH_BYTES = 4_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['devices']} devices, {QUICK['rounds']} rounds of "
                             f"{QUICK['steps']} steps (default {FULL['devices']}, "
                             f"{FULL['rounds']}, {FULL['steps']})")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle with a q x 2 train method (default: the starter "
                             "preset, exported once into --cache-dir)")
    parser.add_argument("--devices", type=int, default=None, help="simulated devices")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds")
    parser.add_argument("--steps", type=int, default=None, help="P-RGE steps per round")
    parser.add_argument("--q", type=int, default=2, help="directions per step")
    parser.add_argument("--lr", type=float, default=1e-2, help="ZO learning rate")
    parser.add_argument("--eps", type=float, default=1e-2, help="ZO perturbation")
    parser.add_argument("--clip", type=float, default=100.0, help="clip of |g| and of a slot")
    parser.add_argument("--pool-size", type=int, default=1024, help="K seeds per round")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="Gaussian noise multiplier on the devices' scalars (0: none)")
    parser.add_argument("--delta", type=float, default=1e-5,
                        help="the delta the reported client-level epsilon is stated at")
    parser.add_argument("--seed", type=int, default=0, help="tasks, data order, seeds")
    parser.add_argument("--shared-split", choices=SPLITS, default="by-category",
                        help="by-category: each device asks about two of the shared task's "
                             "six categories, held out: new questions over all six; iid: "
                             "random slices, held out: unseen categories "
                             "(agent/bench/fleet_sim.py)")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/learn"),
                        help="where the exported starter bundle is cached")
    parser.add_argument("--fedkseed-pro", action="store_true",
                        help="also run FedKSeed-Pro: one pool per run, seeds drawn by the "
                             "magnitude of their aggregated gradients")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")


def _plan(args: argparse.Namespace) -> Plan:
    base = QUICK if args.quick else FULL
    return Plan(devices=args.devices or base["devices"], rounds=args.rounds or base["rounds"],
                steps=args.steps or base["steps"], q=args.q, lr=args.lr, eps=args.eps,
                clip=args.clip, pool_size=args.pool_size, seed=args.seed, noise=args.noise,
                delta=args.delta, shared_split=args.shared_split)


def _bundle(args: argparse.Namespace, plan: Plan) -> Path:
    if args.bundle is not None:
        return Path(args.bundle)
    from agent.bench.learn import DEFAULT_LORA_LAYERS, DEFAULT_RANK
    from agent.bench.learn_methods import parse_method
    from agent.bench.learn_setup import starter_bundle

    method = parse_method(f"prge:q={plan.q},b=2")
    return starter_bundle([method], max_length=80, lora_layers=DEFAULT_LORA_LAYERS,
                          rank=DEFAULT_RANK, cache_dir=args.cache_dir)


def _programs(path: Path, plan: Plan) -> tuple[Any, Any]:
    from agent.io.bundle_files import read_manifest
    from agent.training.programs import choose_train_shape, load_program

    manifest = read_manifest(path)
    shape = choose_train_shape(manifest, "prge", plan.q, 2)
    train = load_program(path, "executorch", shape.slices, shape.batch)
    ev = max((s for s in manifest.train.shapes if s.batch == shape.batch),
             key=lambda s: s.slices)  # scores several adapters per call
    return train, load_program(path, "executorch", ev.slices, ev.batch)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the fleet, run the four comparisons, return the JSON document."""
    torch.set_num_threads(1)
    if log.getEffectiveLevel() > logging.DEBUG:  # Flower logs every round at INFO
        logging.getLogger("flwr").setLevel(logging.WARNING)
    plan = _plan(args)
    path = _bundle(args, plan)
    bundle = load_bundle(path)
    train, evaluate = _programs(path, plan)
    data = fleet_data(bundle, plan.devices, seed=plan.seed, split=plan.shared_split)
    fleet = Fleet(bundle, data, train, evaluate)
    init = torch.from_numpy(bundle.init_b.copy())
    log.info("fleet-learn: %d devices x %d rounds x %d steps (q=%d), K=%d", plan.devices,
             plan.rounds, plan.steps, plan.q, plan.pool_size)
    local, central = run_local(fleet, plan), run_centralized(fleet, plan)
    fed = run_federated(fleet, plan)
    dropout = run_federated(fleet, plan, drop_share=0.25)
    doc = _report(fleet, plan, init, local, central, fed, dropout)
    fedavg = run_fedavg(fleet, plan)
    doc["shared_heldout_loss"]["dense_fedavg"] = fleet.shared_loss([fedavg["global"]])[0]
    doc["seconds_per_round"]["dense_fedavg"] = fedavg["seconds_per_round"]
    for row, loss in zip(doc["rounds"], fedavg["shared_curve"], strict=True):
        row["shared_loss_dense_fedavg"] = loss
    if args.fedkseed_pro:
        doc["fedkseed_pro"] = _pro_report(fleet, doc, run_federated(fleet, plan, pro=True))
        for row, loss in zip(doc["rounds"], doc["fedkseed_pro"]["global_shared_curve"],
                             strict=True):
            row["shared_loss_fedkseed_pro_global"] = loss
    return doc


def _pro_report(fleet: Fleet, doc: dict[str, Any], pro: dict[str, Any]) -> dict[str, Any]:
    """FedKSeed-Pro's shared loss, improvement fraction and bytes beside plain federated's."""
    shared = doc["shared_heldout_loss"]
    served = _mean(fleet.shared_loss(pro["served"]))
    central_gain = shared["start"] - shared["centralized"]
    return {
        "shared_loss": served, "shared_loss_global": fleet.shared_loss([pro["global"]])[0],
        "fraction_of_centralized": ((shared["start"] - served) / central_gain
                                    if central_gain > 0 else None),
        "beats_plain_federated_on_shared": served < shared["federated"],
        "beats_local_on_shared": served < shared["local"],
        "bytes_per_device_per_round": _mean([(r.bytes_up + r.bytes_down) / max(1, r.sent)
                                             for r in pro["reports"]]),
        "private_heldout_loss": fleet.private_loss(pro["served"]),
        "global_shared_curve": pro["global_shared_curve"],
        "rounds": [_counts(r) for r in pro["reports"]],
        "replicas_identical": pro["replicas_identical"]}


def _report(fleet: Fleet, plan: Plan, init: torch.Tensor, local: dict[str, Any],
            central: dict[str, Any], fed: dict[str, Any],
            dropout: dict[str, Any]) -> dict[str, Any]:
    start = fleet.shared_loss([init])[0]
    shared = {"start": start,
              "local": _mean(fleet.shared_loss(local["finals"])),
              "federated": _mean(fleet.shared_loss(fed["served"])),
              "federated_global": fleet.shared_loss([fed["global"]])[0],
              "centralized": fleet.shared_loss([central["final"]])[0]}
    gain = {k: start - v for k, v in shared.items() if k != "start"}
    priv_start = fleet.private_loss([init] * plan.devices)
    priv_local = fleet.private_loss(local["finals"])
    priv_fed = fleet.private_loss(fed["served"])
    rounds = [_round_row(r, fed["global_shared_curve"][i], local["shared_curve"][i],
                         central["shared_curve"][i]) for i, r in enumerate(fed["reports"])]
    per_device = _mean([(r.bytes_up + r.bytes_down) / max(1, r.sent) for r in fed["reports"]])
    dense = 2 * 4 * int(init.numel())  # float32 B up and the new global B down
    doc: dict[str, Any] = {
        "plan": vars(plan) | {"num_params": int(init.numel())},
        "bytes_per_device_per_round": per_device,
        "dense_fedavg_bytes_per_device_per_round": dense,
        "dense_over_federated_bytes": dense / per_device,
        "federated_fraction_of_centralized": (gain["federated"] / gain["centralized"]
                                              if gain["centralized"] > 0 else None),
        "federated_beats_local_on_shared": shared["federated"] < shared["local"],
        "private_within_2pct_of_local": all(f <= loc * 1.02 for f, loc in
                                            zip(priv_fed, priv_local, strict=True)),
        "replicas_identical": fed["replicas_identical"] and dropout["replicas_identical"],
        "privacy": {"noise_multiplier": plan.noise, "delta": plan.delta,
                    "epsilon": epsilon(plan.noise, plan.rounds, plan.delta)
                    if plan.noise > 0 else None},
        "shared_heldout_loss": shared,
        "private_heldout_loss": [{"device": d.node_id, "start": s, "local": lo, "federated": f}
                                 for d, s, lo, f in zip(fleet.data, priv_start, priv_local,
                                                        priv_fed, strict=True)],
        "rounds": rounds,
        "seconds_per_round": {"local": local["seconds_per_round"],
                              "centralized": central["seconds_per_round"],
                              "federated": _mean([r.seconds for r in fed["reports"]])},
        "dropout_25pct": {"rounds_completed": sum(1 for r in dropout["reports"] if r.accepted),
                          "rounds": [_counts(r) for r in dropout["reports"]],
                          "shared_loss": _mean(fleet.shared_loss(dropout["served"]))},
    }
    doc["targets"] = _targets(doc, plan)
    return doc


def _counts(r: Any) -> dict[str, Any]:
    return {"round": r.round, "sent": r.sent, "accepted": r.accepted, "dropped": r.dropped,
            "declined": r.declined, "refused": dict(r.refused), "bytes_up": r.bytes_up,
            "bytes_down": r.bytes_down, "seeds_used": r.seeds_used, "seconds": r.seconds}


def _round_row(r: Any, fed_global: float, local: float, central: float) -> dict[str, Any]:
    return _counts(r) | {"shared_loss_federated_global": fed_global,
                         "shared_loss_local_mean": local, "shared_loss_centralized": central}


def _targets(doc: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    frac = doc["federated_fraction_of_centralized"]
    rows = [
        ("federated >= 80% of centralized's shared improvement", frac is not None and frac >= 0.8),
        ("federated beats local-only on the shared task", doc["federated_beats_local_on_shared"]),
        ("each private task within 2% of local-only", doc["private_within_2pct_of_local"]),
        (f"<= {FEDKSEED_BYTES} bytes per device per round",
         doc["bytes_per_device_per_round"] <= FEDKSEED_BYTES),
        (f"stretch: <= {STRETCH_BYTES} bytes", doc["bytes_per_device_per_round"] <= STRETCH_BYTES),
        (">= 100x fewer bytes than dense FedAvg", doc["dense_over_federated_bytes"] >= 100),
        ("every round completes with 25% dropping out",
         doc["dropout_25pct"]["rounds_completed"] == plan.rounds),
        ("every device's global adapter is bit-identical", doc["replicas_identical"]),
    ]
    return [{"target": t, "met": bool(ok)} for t, ok in rows]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _print(doc: dict[str, Any]) -> None:
    s = doc["shared_heldout_loss"]
    print(f"shared held-out loss: start {s['start']:.4f}  local {s['local']:.4f}  federated "
          f"{s['federated']:.4f} (global {s['federated_global']:.4f})  centralized "
          f"{s['centralized']:.4f}  dense FedAvg {s.get('dense_fedavg', float('nan')):.4f}")
    frac = doc["federated_fraction_of_centralized"]
    print(f"federated / centralized improvement: "
          f"{'n/a' if frac is None else f'{frac:.2f}'}")
    print(f"bytes per device per round: {doc['bytes_per_device_per_round']:.0f} "
          f"(dense FedAvg {doc['dense_fedavg_bytes_per_device_per_round']}, "
          f"{doc['dense_over_federated_bytes']:.0f}x more)")
    pro = doc.get("fedkseed_pro")
    if pro is not None:
        frac = pro["fraction_of_centralized"]
        print(f"FedKSeed-Pro: shared {pro['shared_loss']:.4f} (global "
              f"{pro['shared_loss_global']:.4f}), improvement / centralized "
              f"{'n/a' if frac is None else f'{frac:.2f}'}, "
              f"{pro['bytes_per_device_per_round']:.0f} bytes per device per round")
    for p in doc["private_heldout_loss"]:
        print(f"device {p['device']}: private start {p['start']:.4f} local {p['local']:.4f} "
              f"federated {p['federated']:.4f}")
    for t in doc["targets"]:
        print(f"[{'MET ' if t['met'] else 'MISS'}] {t['target']}")


def main(args: argparse.Namespace) -> int:
    doc = run(args)
    _print(doc)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        from agent.bench.fleet_learn_plot import plot_fleet

        print(f"wrote {plot_fleet(doc, args.plot)}")
    return 0

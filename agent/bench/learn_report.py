"""Numbers derived from finished runs: comparisons, the eval gate, the issue's targets, a table.

- ``seconds_to_mezo_final``: training seconds at the first evaluation where a method's
  held-out loss is at or below MeZO's final held-out loss on the same task (None if never).
  Evaluations are discrete, so this is an upper bound with the evaluation spacing as
  resolution.
- Equal forwards: every method runs the same forward budget, so the final losses compare at
  equal forwards.
- Equal wall-clock: ``loss_at_equal_seconds`` is each method's held-out loss at the last
  evaluation within the shortest run's training seconds on that task.
- The eval gate: the daemon's own (agent/core/eval_gate.py ``judge``, margins from
  ``[adapters]``): the trained adapter as candidate against the start as the active adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.bench.learn_run import RunResult
from agent.core.eval_gate import GateResult, judge


def gate(start: float, final: float, margin: float, mode: str, examples: int) -> GateResult:
    """The daemon's eval gate with ``final`` as the candidate and ``start`` as the active."""
    return judge(final, start, margin=margin, mode=mode,  # type: ignore[arg-type]
                 examples=examples)


def passes_gate(start: float, final: float, margin: float, mode: str) -> bool:
    """Does ``final`` beat ``start`` by ``margin`` (the gate's rule)?"""
    return gate(start, final, margin, mode, examples=1).publish


def _mezo(results: Sequence[RunResult], task: str) -> RunResult | None:
    return next((r for r in results if r.task == task and r.spec.mode == "mezo"), None)


def seconds_to_reach(r: RunResult, target: float) -> float | None:
    return next((p.seconds for p in r.curve if p.loss <= target), None)


def loss_at_seconds(r: RunResult, seconds: float) -> float:
    return [p for p in r.curve if p.seconds <= seconds + 1e-12][-1].loss


def result_objects(results: Sequence[RunResult], *, margin: float,
                   margin_mode: str) -> list[dict[str, Any]]:
    """One JSON object per (task, method) with the issue's keys and the curves."""
    out = []
    for r in results:
        mezo = _mezo(results, r.task)
        same_task = [x for x in results if x.task == r.task]
        t_eq = min(x.final.seconds for x in same_task)
        verdict = gate(r.start.loss, r.final.loss, margin, margin_mode, r.heldout_examples)
        out.append({
            "task": r.task,
            "method": r.spec.method,
            "name": r.spec.name,
            "q": r.spec.q,
            "batch": r.spec.batch,
            "lr": r.spec.lr,
            "eps": r.spec.eps if r.spec.kind == "zo" else None,
            "optimizer": r.spec.optimizer if r.spec.kind == "fo" else "zo-sgd",
            "steps": r.final.steps,
            "start_loss": r.start.loss,
            "final_loss": r.final.loss,
            "start_accuracy": r.start.accuracy,
            "final_accuracy": r.final.accuracy,
            "final_token_accuracy": r.final.token_accuracy,
            "forwards": r.final.forwards,
            "seconds": r.final.seconds,
            "seconds_to_mezo_final": (seconds_to_reach(r, mezo.final.loss)
                                      if mezo is not None else None),
            "equal_seconds": t_eq,
            "loss_at_equal_seconds": loss_at_seconds(r, t_eq),
            "passes_eval_gate": verdict.publish,
            "eval_gate": verdict.reason,
            "train_loss_last": r.train_loss_last,
            "curve": r.curve_dicts(),
        })
    return out


def check_targets(objs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three targets, per task: ``{"target", "task", "met", "detail"}``."""
    checks: list[dict[str, Any]] = []
    tasks = list(dict.fromkeys(o["task"] for o in objs))
    for task in tasks:
        rows = [o for o in objs if o["task"] == task]
        zo_rows = [o for o in rows if o["method"] != "fo-lora"]
        bad = [o["name"] for o in zo_rows if not o["passes_eval_gate"]]
        checks.append({
            "target": "every ZO method lowers held-out loss and passes the eval gate",
            "task": task, "met": bool(zo_rows) and not bad,
            "detail": ", ".join(f"{o['name']} {o['start_loss']:.3f}->{o['final_loss']:.3f}"
                                for o in zo_rows),
        })
        mezo = next((o for o in rows if o["method"] == "mezo"), None)
        p4 = next((o for o in rows if o["method"] == "prge-dual" and o["q"] == 4), None)
        if mezo and p4:
            t = p4["seconds_to_mezo_final"]
            checks.append({
                "target": "P-RGE dual q=4 reaches MeZO's final loss in <= half MeZO's seconds",
                "task": task, "met": t is not None and t <= 0.5 * mezo["seconds"],
                "detail": f"reached at {'never' if t is None else f'{t:.1f}s'}; MeZO ran "
                          f"{mezo['seconds']:.1f}s (half: {0.5 * mezo['seconds']:.1f}s)",
            })
        if mezo:
            prge = [o for o in rows if o["method"] in ("prge", "prge-dual")]
            worse = [o["name"] for o in prge if o["final_loss"] > mezo["final_loss"]]
            checks.append({
                "target": "at equal forwards P-RGE's held-out loss <= MeZO's",
                "task": task, "met": bool(prge) and not worse,
                "detail": f"MeZO {mezo['final_loss']:.3f}; " + ", ".join(
                    f"{o['name']} {o['final_loss']:.3f}" for o in prge),
            })
    return checks


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(objs: Sequence[dict[str, Any]]) -> str:
    """The stdout table: one row per (task, method)."""
    head = ("task", "method", "q", "b", "fwd", "start", "final", "gain%", "acc0", "acc",
            "tokacc", "sec", "t->mezo", "loss@eqsec", "gate")
    rows = [head]
    for o in objs:
        gain = 100.0 * (o["start_loss"] - o["final_loss"]) / o["start_loss"]
        rows.append((
            o["task"], o["name"], str(o["q"]), str(o["batch"]), str(o["forwards"]),
            _fmt(o["start_loss"]), _fmt(o["final_loss"]), f"{gain:.1f}",
            _fmt(o["start_accuracy"], ".2f"), _fmt(o["final_accuracy"], ".2f"),
            _fmt(o["final_token_accuracy"], ".2f"), f"{o['seconds']:.1f}",
            _fmt(o["seconds_to_mezo_final"], ".1f"), _fmt(o["loss_at_equal_seconds"]),
            "pass" if o["passes_eval_gate"] else "FAIL",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_text(checks: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"[{'MET ' if c['met'] else 'MISS'}] {c['task']}: {c['target']} "
                     f"({c['detail']})" for c in checks)

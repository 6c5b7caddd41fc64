"""One (task, method) learning run: steps until the forward budget, held-out curve on the way.

Every method starts from the same B (the bundle's initial adapter) with the same run seed, so
the data order and the perturbations are the same functions of the step in every run, and a
rerun reproduces the losses. Only the training steps are timed (host work included: batch,
perturbations, update); evaluation is not part of a method's seconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from agent.bench.learn_data import LearnData
from agent.bench.learn_methods import MethodSpec
from agent.core import zo
from agent.training.data import BatchStream, Example, collate, padding_example
from agent.training.evaluate import heldout_losses

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class CurvePoint:
    """The held-out metrics after ``forwards`` forward passes (``seconds`` of training)."""

    forwards: int
    steps: int
    seconds: float
    loss: float
    accuracy: float | None
    token_accuracy: float | None


@dataclass
class RunResult:
    """A finished (task, method) run."""

    task: str
    spec: MethodSpec
    curve: list[CurvePoint] = field(default_factory=list)
    final_b: np.ndarray | None = None
    train_loss_last: float | None = None
    heldout_examples: int = 0

    @property
    def start(self) -> CurvePoint:
        return self.curve[0]

    @property
    def final(self) -> CurvePoint:
        return self.curve[-1]

    def curve_dicts(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.curve]


class Evaluator:
    """Held-out loss, accuracy and token accuracy of one adapter on one task.

    Args:
        data: the task's examples.
        loss_program: an S=1 program (the largest exported batch: fewest calls).
        score_program: an S=1 program with the smallest batch, for label-word scoring (each
            candidate is one row; the other rows are padding without targets).
        eager: the eager twin for the teacher-forced argmax match, or None (then exact match
            and token accuracy are reported as None).
        pad_id: the tokenizer's pad id.
    """

    def __init__(self, data: LearnData, loss_program: zo.LossFn, score_program: zo.LossFn,
                 eager: Any | None, pad_id: int) -> None:
        self.data = data
        self.loss_program = loss_program
        self.score_program = score_program
        self.eager = eager
        self.pad_id = pad_id

    def label_accuracy(self, lora_b: np.ndarray) -> float:
        """Share of held-out examples whose right label word has the lowest mean CE.

        Each candidate completion goes through the train program on its own (its loss is
        the mean CE of the label tokens and EOS); ties count as wrong.
        """
        prog = self.score_program
        rows = torch.as_tensor(lora_b, dtype=torch.float32).reshape(1, -1).repeat(prog.slices, 1)
        correct = 0
        for cand in self.data.candidates:
            losses = [self._one(prog, ex, rows) for ex in cand.choices]
            best = int(np.argmin(losses))
            unique = sum(1 for v in losses if v == losses[best]) == 1
            correct += int(best == cand.label_index and unique)
        return correct / max(1, len(self.data.candidates))

    def _one(self, prog: zo.LossFn, ex: Example, rows: torch.Tensor) -> float:
        length = int(ex.tokens.shape[0])
        tokens, mask = collate([ex] + [padding_example(length, self.pad_id)] * (prog.batch - 1))
        return float(prog.losses(tokens, mask, rows)[0])

    def __call__(self, lora_b: np.ndarray) -> tuple[float, float | None, float | None]:
        loss = heldout_losses(self.loss_program, self.data.heldout, [lora_b],
                              pad_id=self.pad_id)[0]
        exact = tok = None
        if self.eager is not None:
            exact, tok = self.eager.argmax_match(self.data.heldout, lora_b)
        acc = self.label_accuracy(lora_b) if self.data.metric == "accuracy" else exact
        return loss, acc, tok


def _eval_marks(budget: int, points: int, per_step: int) -> list[int]:
    """Forward counts to evaluate at: ~``points`` evenly spaced, on step boundaries."""
    steps = max(1, budget // per_step)
    marks = sorted({max(1, round(steps * k / points)) * per_step for k in range(1, points + 1)})
    return [m for m in marks if m <= steps * per_step]


def run_method(
    spec: MethodSpec,
    data: LearnData,
    init_b: np.ndarray,
    evaluator: Evaluator,
    *,
    budget_forwards: int,
    eval_points: int,
    seed: int,
    program: zo.LossFn | None = None,
    eager: Any | None = None,
    clock: Clock = time.perf_counter,
) -> RunResult:
    """Train ``spec`` on ``data`` from ``init_b`` for ``budget_forwards`` forward passes.

    Args:
        program: the ZO method's train program (``fo`` uses ``eager`` instead).
        eval_points: held-out evaluations besides the one at the start.
        seed: run seed (data order; ZO step seeds).
        clock: timer for the training steps.
    """
    result = RunResult(data.name, spec, heldout_examples=len(data.heldout))
    per_step = spec.forwards_per_step
    steps_total = max(1, budget_forwards // per_step)
    marks = set(_eval_marks(budget_forwards, eval_points, per_step))
    stream = BatchStream(data.train, spec.batch, seed)
    loss, acc, tok = evaluator(init_b)
    result.curve.append(CurvePoint(0, 0, 0.0, loss, acc, tok))
    b = torch.from_numpy(np.array(init_b, dtype=np.float32, copy=True))
    buffers = zo.StepBuffers()
    seconds = 0.0
    if spec.kind == "fo":
        if eager is None:
            raise ValueError("the first-order baseline needs the eager model")
        param = torch.nn.Parameter(b.reshape(1, -1).clone())
        opt: torch.optim.Optimizer = (
            torch.optim.Adam([param], lr=spec.lr) if spec.optimizer == "adam"
            else torch.optim.SGD([param], lr=spec.lr))
    for t in range(steps_total):
        t0 = clock()
        tokens, mask = stream.batch_at(t)
        if spec.kind == "fo":
            assert eager is not None
            opt.zero_grad(set_to_none=True)
            step_loss = eager.loss(tokens, mask, param)
            step_loss.backward()
            opt.step()
            train_loss = float(step_loss.detach())
        else:
            assert program is not None and spec.mode is not None
            res = zo.zo_step(program, spec.mode, b, tokens, mask, run_seed=seed, step=t,
                             q=spec.q, eps=spec.eps, lr=spec.lr, buffers=buffers)
            b = res.lora_b
            train_loss = res.estimate.loss
        seconds += clock() - t0
        result.train_loss_last = train_loss
        fwd = (t + 1) * per_step
        if fwd in marks or t == steps_total - 1:
            cur = (param.detach().reshape(-1) if spec.kind == "fo" else b).numpy()
            loss, acc, tok = evaluator(cur)
            result.curve.append(CurvePoint(fwd, t + 1, seconds, loss, acc, tok))
            if not math.isfinite(loss):
                log.warning("%s on %s diverged at step %d (held-out loss %s); stopping it",
                            spec.name, data.name, t + 1, loss)
                break
    final = param.detach().reshape(-1) if spec.kind == "fo" else b
    result.final_b = final.numpy().copy()
    return result

"""The pure MobiZO estimator (agent.core.zo) on analytic loss functions.

(a) the three modes give the same g_i for the same seeds; (b) on a quadratic with a known
gradient the estimator is unbiased and ZO-SGD converges. The same check on the real starter
bundle through ExecuTorch lives in tests/training/test_trainer_runtime.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from agent.core import zo

P = 24


def _quadratic(p: int = P, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.rand(p, generator=gen, dtype=torch.float64) * 2 + 0.5  # curvatures in [0.5, 2.5]
    c = torch.randn(p, generator=gen, dtype=torch.float64)

    def f(b: torch.Tensor) -> torch.Tensor:
        d = b.to(torch.float64) - c
        return 0.5 * (h * d * d).sum()

    def grad(b: torch.Tensor) -> torch.Tensor:
        return h * (b.to(torch.float64) - c)

    return f, grad, c


def _nonlinear(b: torch.Tensor) -> torch.Tensor:
    b = b.to(torch.float64)
    return torch.log1p((b.sin() * torch.arange(1, b.numel() + 1)).pow(2).sum()) + b.cos().sum()


_TOKENS = torch.zeros(1, 4, dtype=torch.int64)
_MASK = torch.ones(1, 4)


def test_step_seed_is_pure_and_distinct():
    assert zo.step_seed(7, 3) == zo.step_seed(7, 3)
    seeds = {zo.step_seed(run, t) for run in range(5) for t in range(200)}
    assert len(seeds) == 1000
    z1 = zo.perturbation(zo.step_seed(1, 0), 0, P)
    assert torch.equal(z1, zo.perturbation(zo.step_seed(1, 0), 0, P))
    assert not torch.equal(z1, zo.perturbation(zo.step_seed(1, 0), 1, P))
    assert not torch.equal(z1, zo.perturbation(zo.step_seed(1, 1), 0, P))


@pytest.mark.parametrize("q", [1, 4, 8])
def test_modes_give_same_projected_grads(q: int):
    b = torch.randn(P, generator=torch.Generator().manual_seed(3)) * 0.1
    results = {}
    for mode in zo.MODES:
        fn = zo.AnalyticLoss(_nonlinear, slices=zo.slices_needed(mode, q))
        res = zo.zo_step(fn, mode, b, _TOKENS, _MASK, run_seed=11, step=5, q=q,
                         eps=1e-2, lr=1e-2)
        assert fn.calls == zo.calls_per_step(mode, q)
        results[mode] = res
    ref = results["mezo"]
    for mode in ("prge", "prge-dual"):
        got = results[mode]
        assert got.projected_grads == pytest.approx(ref.projected_grads, rel=1e-6, abs=1e-6)
        assert torch.allclose(got.lora_b, ref.lora_b, atol=1e-7)


def test_padded_program_gives_same_grads():
    """A program with more slices than the mode needs: extra rows are ignored."""
    b = torch.zeros(P)
    exact = zo.estimate(zo.AnalyticLoss(_nonlinear, slices=4), "prge", b, _TOKENS, _MASK,
                        seed_t=9, q=4, eps=1e-2)
    padded = zo.estimate(zo.AnalyticLoss(_nonlinear, slices=8), "prge", b, _TOKENS, _MASK,
                         seed_t=9, q=4, eps=1e-2)
    assert padded.projected_grads == exact.projected_grads
    with pytest.raises(ValueError, match="needs 8 slices"):
        zo.estimate(zo.AnalyticLoss(_nonlinear, slices=4), "prge-dual", b, _TOKENS, _MASK,
                    seed_t=9, q=4, eps=1e-2)


def test_estimator_is_unbiased_on_quadratic():
    f, grad, _ = _quadratic()
    b = torch.randn(P, generator=torch.Generator().manual_seed(5)).float()
    true = grad(b)
    fn = zo.AnalyticLoss(f, slices=8)
    q, n = 4, 1500
    acc = torch.zeros(P, dtype=torch.float64)
    proj_err = 0.0
    for t in range(n):
        seed_t = zo.step_seed(123, t)
        est = zo.estimate(fn, "prge-dual", b, _TOKENS, _MASK, seed_t=seed_t, q=q, eps=1e-2)
        for i, g in enumerate(est.projected_grads):
            z = zo.perturbation(seed_t, i, P).to(torch.float64)
            acc += g * z / q
            # central differences are exact on a quadratic: g_i = z_iᵀ ∇f (up to float32)
            proj_err = max(proj_err, abs(g - float(z @ true)) / (1 + abs(float(z @ true))))
    mean = acc / n
    assert proj_err < 1e-3
    # E[ĝ] = ∇f; the standard error of the mean is about |∇f|·sqrt((P+1)/(q·n)).
    rel = float((mean - true).norm() / true.norm())
    assert rel < 4 * math.sqrt((P + 1) / (q * n)), rel


@pytest.mark.parametrize("mode", zo.MODES)
def test_zo_sgd_converges_on_quadratic(mode: zo.Mode):
    f, _, c = _quadratic(seed=1)
    q = 4
    fn = zo.AnalyticLoss(f, slices=zo.slices_needed(mode, q))
    b = torch.zeros(P)
    start = float(f(b))
    for t in range(400):
        b = zo.zo_step(fn, mode, b, _TOKENS, _MASK, run_seed=2, step=t, q=q, eps=1e-2,
                       lr=0.1).lora_b
    assert float(f(b)) < start * 0.02
    assert float((b.double() - c).norm()) < 0.2 * float(c.norm())


def test_clip_bounds_grads_and_drops_nonfinite():
    assert zo.clip_grads((5.0, -5.0, 0.5), 1.0) == (1.0, -1.0, 0.5)
    assert zo.clip_grads((float("nan"), float("inf"), 2.0), None) == (0.0, 0.0, 2.0)
    b = torch.ones(P)
    assert torch.equal(zo.apply_update(b, (0.0, 0.0), seed_t=1, lr=1.0), b)


def test_update_matches_formula():
    b = torch.randn(P)
    grads = (0.5, -2.0, 1.0)
    got = zo.apply_update(b, grads, seed_t=77, lr=0.1)
    want = b.double().clone()
    for i, g in enumerate(grads):
        want -= 0.1 * g / 3 * zo.perturbation(77, i, P).double()
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_learning_rate_schedules():
    kw = {"base_lr": 1.0, "total_steps": 100}
    assert zo.learning_rate(50, **kw) == 1.0
    assert zo.learning_rate(0, warmup_steps=10, **kw) == pytest.approx(0.1)
    assert zo.learning_rate(9, warmup_steps=10, **kw) == pytest.approx(1.0)
    assert zo.learning_rate(0, schedule="linear", **kw) == 1.0
    assert zo.learning_rate(50, schedule="linear", **kw) == pytest.approx(0.5)
    assert zo.learning_rate(100, schedule="linear", **kw) == 0.0
    assert zo.learning_rate(50, schedule="cosine", **kw) == pytest.approx(0.5)
    assert zo.learning_rate(100, schedule="cosine", min_lr_ratio=0.1, **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        zo.learning_rate(1, schedule="bogus", **kw)  # type: ignore[arg-type]


def test_shapes_per_mode():
    assert [zo.slices_needed(m, 4) for m in zo.MODES] == [1, 4, 8]
    assert [zo.calls_per_step(m, 4) for m in zo.MODES] == [8, 2, 1]
    with pytest.raises(ValueError):
        zo.slices_needed("adam", 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", zo.MODES)
def test_reused_step_buffers_change_nothing_but_allocations(mode):
    """A run that keeps one StepBuffers computes the same bits as fresh memory every step, and
    the B stack it hands the program is the same tensor each step (no new 6 MB rows)."""
    fn = zo.AnalyticLoss(_nonlinear, slices=8)  # more slices than q=3 needs: padded rows too
    seen_stacks = []
    losses = fn.losses

    def recording(tokens, mask, lora_b):
        seen_stacks.append(lora_b.data_ptr())
        return losses(tokens, mask, lora_b)

    fn.losses = recording
    buffers = zo.StepBuffers()
    fresh = kept = torch.randn(P, generator=torch.Generator().manual_seed(5)) * 0.1
    for step in range(4):
        a = zo.zo_step(fn, mode, fresh, _TOKENS, _MASK, run_seed=3, step=step, q=3, eps=1e-2,
                       lr=1e-2)
        b = zo.zo_step(fn, mode, kept, _TOKENS, _MASK, run_seed=3, step=step, q=3, eps=1e-2,
                       lr=1e-2, buffers=buffers)
        assert a.projected_grads == b.projected_grads
        assert torch.equal(a.lora_b, b.lora_b)
        assert b.estimate.program_seconds >= 0.0
        fresh, kept = a.lora_b, b.lora_b
    calls = zo.calls_per_step(mode, 3)
    kept_stacks = [ptr for i, ptr in enumerate(seen_stacks) if (i // calls) % 2 == 1]
    assert len(set(kept_stacks)) == 1


@pytest.mark.parametrize("mode", ["prge", "prge-dual"])
def test_directions_over_budget_are_drawn_again_with_the_same_bits(mode):
    """Past the budget P-RGE keeps one scratch direction instead of q; nothing else changes."""
    fn = zo.AnalyticLoss(_nonlinear, slices=6)
    lora_b = torch.randn(P, generator=torch.Generator().manual_seed(7)) * 0.1
    kept, redrawn = zo.StepBuffers(), zo.StepBuffers(directions_budget=0)
    assert kept.keeps_directions(3, P) and not redrawn.keeps_directions(3, P)
    for step in range(3):
        a = zo.zo_step(fn, mode, lora_b, _TOKENS, _MASK, run_seed=1, step=step, q=3, eps=1e-2,
                       lr=1e-2, buffers=kept)
        b = zo.zo_step(fn, mode, lora_b, _TOKENS, _MASK, run_seed=1, step=step, q=3, eps=1e-2,
                       lr=1e-2, buffers=redrawn)
        assert a.projected_grads == b.projected_grads
        assert torch.equal(a.lora_b, b.lora_b)
        lora_b = a.lora_b
    assert kept.nbytes - redrawn.nbytes == 2 * P * 4  # one direction held instead of q = 3


def test_directions_give_the_same_bits_kept_or_drawn_again():
    """zo_directions.Directions: the kept [q, P] rows and the redrawn scratch row agree."""
    from agent.core.zo_directions import Directions, step_keeps_directions

    seed_t = zo.step_seed(5, 2)
    kept = Directions(zo.StepBuffers(), seed_t, 3, P, keep=True)
    redrawn = Directions(zo.StepBuffers(), seed_t, 3, P, keep=False)
    for i in range(3):
        assert torch.equal(kept[i], zo.perturbation(seed_t, i, P))
        assert torch.equal(redrawn[i], zo.perturbation(seed_t, i, P))
    assert not step_keeps_directions(zo.StepBuffers(), "mezo", 3, P)  # MeZO redraws
    assert step_keeps_directions(zo.StepBuffers(), "prge", 3, P)

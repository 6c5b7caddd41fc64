"""A bundle exported on x86_64 trains and generates on an (emulated) Arm CPU with the same numbers.

Issue 21, item 1: P-RGE steps on the board give the host's projected gradients g_i, and greedy
decoding gives the same token ids, for fp32, 8da8w and 8da4w, on the Raspberry Pi 4's core
(Cortex-A72: ARMv8.0, no dot product), the Pi 5's (Cortex-A76: dotprod; Jetson Orin's A78AE
has the same int8 features) and qemu's "max" (dotprod, i8mm, SVE, SME; "max,sme=off" without
SME). The CPUs are chosen to keep a full run short: "max" runs fp32 at ~330 s a step (SVE
emulation), so only the int8 cases that need it run there; fp32 runs on the Cortex-A76 only,
since its kernels are plain NEON on every ARMv8 core (dotprod and i8mm are int8 instructions).
The cases are independent: ``pytest -n 7`` (pytest-xdist) runs them side by side.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.platform.board import (
    TRAIN_EPS,
    Board,
    SideRun,
    export_bundle,
    max_rel_diff,
    record,
    run_board,
    run_host,
)
from tests.platform.qemu_sme import EXPECTED, smopa_block

# Emulation is slow (minutes a case on a loaded machine): past the suite's 600 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

# fp32: the bound. Measured 4.9e-6 (one ulp of one loss, divided by 2ε).
G_REL_TOL = 1e-4
# int8 schemes (8da8w, 8da4w): the bound is on each loss, and g_i's follows from it.
# g_i = (L+ - L-) / 2ε, so losses each within u·|L| give |Δg_i| <= u·(|L+| + |L-|) / 2ε:
# with L ≈ 5.7 and ε = 0.01 that is 570·u, ~120·u relative to g_i ≈ 4.7. A bound of 1e-4
# relative on g_i asks the losses to agree within ~8e-7 relative, a few float32 ulps, which
# dynamic int8 quantization cannot give even on one CPU: activations are rounded to 1/255
# of their row's range, so an ulp of difference upstream (fp32 norms, softmax, reduction
# order, FMA or not) can move an activation by a whole quantization step, and the loss is
# piecewise constant with jumps. Measured on x86_64 alone (report-ARM, issue 21), the same
# 8da8w bundle and seed with ε moved by ±1e-6 relative (a smooth loss would move ~1e-8, and
# fp32's does: <= 8.4e-8): the losses jump by 7e-6 to 3.8e-5 relative at step 1 and up to
# INT8_LOSS_JUMP at step 2 (which starts from the nudged step 1's update), g_i by 1.9e-3
# (step 1) and 9.3e-3 (step 2) relative. 1 vs 2 threads: identical. The Arm boards' losses
# must stay within twice the largest jump x86_64 shows against itself; that bounds g_i to
# ~2.4% of its size here, and the one real fault found (SME, below) was 3% in the loss.
INT8_LOSS_JUMP = 9.9e-5
INT8_LOSS_REL_TOL = 2 * INT8_LOSS_JUMP

# Measured here (qemu 7.2, XNNPACK in executorch 1.5.1): on qemu's "max" CPU, which exposes
# SME as well as SVE, 8da8w computes wrong numbers (g_i -2.74 for 4.71, losses 5.1e-2
# relative off, first logits 1.15, greedy token 129 for 10). With SME switched off
# (max,sme=off: SVE, i8mm and dotprod stay) it agrees with x86_64 like every other Arm CPU,
# so the fault is in the SME path. The XNNPACK backend (libexecutorch_backend_xnnpack.so)
# carries KleidiAI's SME kernels, e.g. kai_kernel_matmul_clamp_f32_qai8dxp1vlx4_qsi8cxp4vlx4_
# 1vlx4vl_sme_mopa, which accumulate with SMOPA (4-way: `smopa za0.s, p2/m, p2/m, z16.b,
# z24.b`), and qemu 7.2 computes that instruction wrongly (qemu issue 2083;
# test_qemu_smopa_int8_outer_product below shows it on this qemu). No Pi or Jetson has SME;
# on SME hardware (Apple M4, Arm C1) 8da8w is unchecked.
SME_INT8 = pytest.mark.xfail(
    strict=True, reason="8da8w with SME exposed differs from x86_64 under qemu 7.2 (issue 21)")

# The Cortex-A72 (ARMv8.0, no LSE atomics) cannot load ExecuTorch's LLM ops library
# (agent/io/llm_ops.py): its bundles are exported with --attention masked, as a Pi 4's are.
ARMV8_0 = "cortex-a72"
CASES = [
    pytest.param("none", "cortex-a76", id="fp32-a76"),
    pytest.param("8da8w", "cortex-a76", id="8da8w-a76"),
    pytest.param("8da8w", ARMV8_0, id="8da8w-a72"),
    pytest.param("8da8w", "max,sme=off", id="8da8w-max-sve-i8mm"),
    pytest.param("8da8w", "max", id="8da8w-max-sme", marks=SME_INT8),
    pytest.param("8da4w", "cortex-a76", id="8da4w-a76"),
    pytest.param("8da4w", ARMV8_0, id="8da4w-a72"),
]


@functools.cache
def _host(scheme: str, data: Path, attention: str = "llm-ops") -> tuple[Path, SideRun]:
    """The scheme's bundle and the host's run of it, once a session per scheme."""
    bundle = export_bundle(scheme, attention)
    return bundle, run_host(scheme, bundle, data)


def loss_rel_diff(host: SideRun, board: SideRun) -> float:
    """Largest relative difference of the losses the g_i were computed from."""
    return max(max_rel_diff(host.loss_plus, board.loss_plus),
               max_rel_diff(host.loss_minus, board.loss_minus))


def int8_g_bound(host: SideRun) -> list[float]:
    """Per g_i, the absolute difference that losses within INT8_LOSS_REL_TOL allow."""
    return [INT8_LOSS_REL_TOL * (abs(lp) + abs(lm)) / (2 * TRAIN_EPS)
            for lp, lm in zip(host.loss_plus, host.loss_minus, strict=True)]


@pytest.mark.parametrize(("scheme", "cpu"), CASES)
def test_board_matches_host(arm_board: Board, train_data: Path, scheme: str, cpu: str) -> None:
    bundle, host = _host(scheme, train_data, "masked" if cpu == ARMV8_0 else "llm-ops")
    board = run_board(arm_board, scheme, bundle, train_data, cpu)
    g_rel = max_rel_diff(host.g, board.g)
    loss_rel = loss_rel_diff(host, board)
    record("aarch64-parity", {
        "scheme": scheme, "cpu": cpu, "g_host": host.g, "g_board": board.g, "g_max_rel": g_rel,
        "loss_max_rel": loss_rel, "greedy_equal": host.tokens == board.tokens,
        "tokens": board.tokens,
        "first_logits_max_rel": max_rel_diff(host.first_logits, board.first_logits, floor=1.0),
        "host": asdict(host) | {"first_logits": None},
        "board": asdict(board) | {"first_logits": None},
    })
    assert len(board.g) == len(host.g) > 0
    if scheme == "none":
        assert g_rel <= G_REL_TOL, f"fp32: g_i differ by {g_rel:.2e}: {host.g} vs {board.g}"
    else:
        assert loss_rel <= INT8_LOSS_REL_TOL, f"{scheme}: losses differ by {loss_rel:.2e}"
        for h, b, bound in zip(host.g, board.g, int8_g_bound(host), strict=True):
            assert abs(h - b) <= bound, f"{scheme}: g_i {h} vs {b} (bound {bound:.2e})"
    same = greedy_prefix_to_compare(scheme, host)
    assert host.tokens[:same] == board.tokens[:same], (
        f"{scheme}: greedy {host.tokens} vs {board.tokens} (compared the first {same})")


# Int8/int4 logits move with the same quantization jumps as the losses: the first logits of
# 8da8w differ by up to 8.3e-3 relative between x86_64 and a correct Arm core (max,sme=off,
# report-ARM). Where the host's top two logits are closer than that, the pick is a tie within
# int8's noise, either token is right, and the sequences may part from there on. Measured:
# 8da4w on cortex-a76 with the LLM ops, token 16 of 16: host margin 0.0038 on logits of
# 0.92 (0.4 %), host 10, board 256.
INT8_LOGIT_REL_NOISE = 2 * 8.3e-3


def greedy_prefix_to_compare(scheme: str, host: SideRun) -> int:
    """How many greedy tokens must agree: all for fp32; for int8 schemes, those before the
    first pick whose host margin is within int8's logit noise (a tie either way)."""
    if scheme == "none" or not host.margins:
        return len(host.tokens)
    scale = max(abs(x) for x in host.first_logits)
    for i, margin in enumerate(host.margins):
        if margin <= INT8_LOGIT_REL_NOISE * scale:
            return i
    return len(host.tokens)


def test_an_llm_ops_bundle_is_refused_on_armv8_0_not_killed(arm_board: Board) -> None:
    """On the Pi 4's core the LLM ops library would die with SIGILL at load (LSE atomics):
    the runtime does not load it there, and a bundle whose infer program needs it is refused
    with the re-export command, while its train program still runs (it does not call them)."""
    bundle = export_bundle("8da4w")  # the default: --attention llm-ops
    rel = bundle.relative_to(arm_board.share)
    code = ("from pathlib import Path; from agent.errors import BundleError; "
            "from agent.io.runtime import InferProgram\n"
            f"try: InferProgram(Path('{rel}'))\n"
            "except BundleError as exc: print('REFUSED', exc)")
    out, _ = arm_board.run(f'python -c "{code}"', cpu=ARMV8_0, timeout=1800)
    assert "REFUSED" in out and "--attention masked" in out, out[-2000:]


def test_board_cpu_exposes_int8_dot_products(arm_board: Board) -> None:
    """The emulated CPU has the features XNNPACK's Arm int8 kernels dispatch on."""
    code = ("import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; "
            "print(bool(g(16) >> 20 & 1), bool(g(26) >> 13 & 1))")
    out, _ = arm_board.run(f'python -c "{code}"', timeout=600)
    assert out.split()[-2:] == ["True", "True"], f"asimddp/i8mm not exposed: {out!r}"


@pytest.mark.parametrize(("cpu", "part", "dot"), [("cortex-a72", "0xd08", False),
                                                  ("cortex-a76", "0xd0b", True),
                                                  ("max", "0x051", True)])
def test_board_cpuinfo_names_the_emulated_core(arm_board: Board, cpu: str, part: str,
                                               dot: bool) -> None:
    """/proc/cpuinfo on the board describes qemu's CPU, not a fixed one.

    It once named a Neoverse-V1 (part 0xd40) for every -cpu; cpuinfo enables dotprod for
    that part without looking at HWCAP, and 8da8w died of SIGILL on the Cortex-A72. (This
    replaces the Cortex-A72 smoke run: the 8da8w-a72 and 8da4w-a72 cases above train and
    generate there.)
    """
    out, _ = arm_board.run("cat /proc/cpuinfo", cpu=cpu, timeout=600)
    fields = dict(line.split(":", 1) for line in out.split("\n\n")[0].splitlines())
    assert fields["CPU part\t"].strip() == part
    assert ("asimddp" in fields["Features\t"].split()) is dot



@pytest.mark.xfail(strict=True, reason="qemu 7.2's SMOPA (4-way) is wrong: qemu issue 2083")
def test_qemu_smopa_int8_outer_product(tmp_path: Path) -> None:
    """The instruction behind the 8da8w-max-sme xfail computes what the Arm ARM says.

    Measured with Debian's qemu 7.2.22: rows [110 478 158 654], [0 0 0 0], ... instead of
    EXPECTED. When this passes (a fixed qemu), remove SME_INT8 from 8da8w-max-sme too.
    """
    block = smopa_block(tmp_path)
    if isinstance(block, str):
        pytest.skip(block)
    assert block == EXPECTED

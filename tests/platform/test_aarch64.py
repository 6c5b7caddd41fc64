"""A bundle exported on x86_64 trains and generates on an (emulated) Arm CPU with the same numbers.

Issue 21, item 1: P-RGE steps on the board give the host's projected gradients g_i within
1e-4 relative, and greedy decoding gives the same token ids, for fp32 and 8da8w (whose int8
linears run XNNPACK's Arm kernels; qemu -cpu max exposes dotprod and i8mm).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from tests.platform.board import PROBE, Board, max_rel_diff, record, run_board, run_host

pytestmark = pytest.mark.slow

G_REL_TOL = 1e-4


# Measured here (qemu 7.2, XNNPACK in executorch 1.5.1): with SVE exposed, 8da8w's int8
# linears give a different loss (5.5597 against 5.7346 on x86_64 and on the same emulated
# CPU with sve=off), at every SVE vector length tried (128, 256, 512 bit). Whether qemu's
# SVE emulation or XNNPACK's SVE int8 kernels are wrong needs real SVE hardware to tell.
SVE_INT8 = pytest.mark.xfail(
    strict=True, reason="8da8w with SVE exposed differs from x86_64 under qemu (issue 21)")
# Without SVE (dotprod, the Pi 5 / Jetson Orin class) 8da8w comes close but not within 1e-4:
# g_i 4.70741 against 4.70598 (3.0e-4 relative), loss 5.734790 against 5.734639; the int8
# kernels of the two ISAs quantize activations or accumulate differently. Left visible for
# the issue to decide (a looser bound for int8 schemes, or a kernel fix), not widened here.
DOTPROD_INT8 = pytest.mark.xfail(
    strict=True, reason="8da8w on Arm dotprod: g_i 3.0e-4 relative from x86_64 (issue 21)")
CPUS = [pytest.param("cortex-a76", id="a76-dotprod"), pytest.param("max", id="max-sve-i8mm")]


@pytest.mark.parametrize("cpu", CPUS)
def test_board_matches_host(arm_board: Board, scheme_bundle: tuple[str, Path],
                            train_data: Path, cpu: str, request: pytest.FixtureRequest) -> None:
    scheme, bundle = scheme_bundle
    if scheme == "8da8w":
        request.applymarker(SVE_INT8 if cpu == "max" else DOTPROD_INT8)
    host = run_host(scheme, bundle, train_data)
    board = run_board(arm_board, scheme, bundle, train_data, cpu)
    g_rel = max_rel_diff(host.g, board.g)
    logit_rel = max_rel_diff(host.first_logits, board.first_logits, floor=1.0)
    record("aarch64-parity", {
        "scheme": scheme, "cpu": cpu, "g_host": host.g, "g_board": board.g, "g_max_rel": g_rel,
        "greedy_equal": host.tokens == board.tokens, "tokens": board.tokens,
        "first_logits_max_rel": logit_rel, "host": asdict(host) | {"first_logits": None},
        "board": asdict(board) | {"first_logits": None},
    })
    assert len(board.g) == len(host.g) > 0
    assert g_rel <= G_REL_TOL, f"{scheme}: g_i differ by {g_rel:.2e}: {host.g} vs {board.g}"
    assert host.tokens == board.tokens, f"{scheme}: greedy {host.tokens} vs {board.tokens}"


def test_board_cpu_exposes_int8_dot_products(arm_board: Board) -> None:
    """The emulated CPU has the features XNNPACK's Arm int8 kernels dispatch on."""
    code = ("import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; "
            "print(bool(g(16) >> 20 & 1), bool(g(26) >> 13 & 1))")
    out, _ = arm_board.run(f'python -c "{code}"', timeout=600)
    assert out.split()[-2:] == ["True", "True"], f"asimddp/i8mm not exposed: {out!r}"


def test_armv8_0_board_generates(arm_board: Board, scheme_bundle: tuple[str, Path],
                                 request: pytest.FixtureRequest) -> None:
    """The Raspberry Pi 4's Cortex-A72 (ARMv8.0: no dotprod, no LSE atomics) runs the bundle."""
    scheme, bundle = scheme_bundle
    if scheme == "8da8w":
        # Measured here: SIGILL (qemu: "uncaught target signal 4") in the first forward of
        # an 8da8w program; fp32 runs. The int8 path executes an ARMv8.2 instruction
        # without checking the CPU has it. A Pi 4 cannot use an 8da8w bundle until fixed.
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="8da8w SIGILL on ARMv8.0 (Cortex-A72) under qemu (issue 21)"))
    rel = bundle.relative_to(arm_board.share)
    out, _ = arm_board.run(f"python run/{PROBE.name} {rel} 4", cpu="cortex-a72", timeout=1800)
    assert '"tokens"' in out

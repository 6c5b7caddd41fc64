"""One SME instruction run under qemu: the int8 outer product SMOPA (4-way) (issue 21).

8da8w on qemu's "max" CPU computes wrong numbers while it is right on the same CPU with
sme=off. XNNPACK's SME int8 GEMM kernels accumulate with SMOPA za.s, z.b, z.b, and qemu 7.2
(Debian bookworm's) emulates that instruction wrongly: qemu issue 2083, "AArch64 SME SMOPA
(4-way) outer product instruction gives incorrect result"
(https://gitlab.com/qemu-project/qemu/-/issues/2083). This program is that report's example:
a = 0..15, b = 16..31 as bytes, C[r][c] = sum_k a[4r+k] * b[4c+k], the first 4x4 block of
ZA tile 0 printed row by row. Built with the cross gcc the board's setup installs anyway.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

EXPECTED = [[110, 134, 158, 182], [390, 478, 566, 654], [670, 822, 974, 1126],
            [950, 1166, 1382, 1598]]

MAIN_C = r"""
#include <stdint.h>
#include <stdio.h>
void smopa_4x4(int32_t *dst);
int main(void) {
    int32_t dst[16];
    smopa_4x4(dst);
    for (int i = 0; i < 16; ++i) printf("%d%c", dst[i], i % 4 == 3 ? '\n' : ' ');
    return 0;
}
"""

SMOPA_S = """
    .arch armv9-a+sme
    .global smopa_4x4
smopa_4x4:
    stp d8, d9, [sp, -64]!
    stp d10, d11, [sp, 16]
    stp d12, d13, [sp, 32]
    stp d14, d15, [sp, 48]
    smstart
    ptrue p0.b
    index z0.b, #0, #1
    mov z1.d, z0.d
    add z1.b, z1.b, #16
    zero {za}
    smopa za0.s, p0/m, p0/m, z0.b, z1.b
    mov w12, #0
    mova z0.s, p0/m, za0h.s[w12, 0]
    mova z1.s, p0/m, za0h.s[w12, 1]
    mova z2.s, p0/m, za0h.s[w12, 2]
    mova z3.s, p0/m, za0h.s[w12, 3]
    ptrue p1.s, vl4
    st1w {z0.s}, p1, [x0]
    add x0, x0, #16
    st1w {z1.s}, p1, [x0]
    add x0, x0, #16
    st1w {z2.s}, p1, [x0]
    add x0, x0, #16
    st1w {z3.s}, p1, [x0]
    smstop
    ldp d10, d11, [sp, 16]
    ldp d12, d13, [sp, 32]
    ldp d14, d15, [sp, 48]
    ldp d8, d9, [sp], 64
    ret
"""


def smopa_block(workdir: Path, cpu: str = "max") -> list[list[int]] | str:
    """The 4x4 block qemu computes, or why it could not be built or run."""
    gcc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static")
    if gcc is None or qemu is None:
        return "aarch64-linux-gnu-gcc or qemu-aarch64-static missing"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "main.c").write_text(MAIN_C)
    (workdir / "smopa.S").write_text(SMOPA_S)
    exe = workdir / "smopa"
    build = subprocess.run([gcc, "-static", "-O1", "main.c", "smopa.S", "-o", exe.name],
                           cwd=workdir, capture_output=True, text=True, check=False)
    if build.returncode != 0:
        return f"cannot assemble SME: {build.stderr.strip()[-400:]}"
    run = subprocess.run([qemu, "-cpu", cpu, str(exe)], capture_output=True, text=True,
                         timeout=120, check=False)
    if run.returncode != 0:
        return f"qemu failed: {run.stderr.strip()[-400:]}"
    return [[int(x) for x in line.split()] for line in run.stdout.splitlines()]

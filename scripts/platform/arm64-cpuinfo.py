"""Print the /proc/cpuinfo an arm64 Linux kernel would show for the CPU qemu emulates (issue 21).

    QEMU_CPU=cortex-a72 chroot ROOTFS python3 /tmp/arm64-cpuinfo.py NPROC

Runs on the board itself (under qemu-aarch64), so every value comes from the emulated CPU:
the feature names from AT_HWCAP/AT_HWCAP2 (what qemu's loader gives the process) and the
implementer/variant/part/revision from MIDR_EL1 (read with ``mrs``, which qemu emulates for
user space as Linux does). Under user emulation the real /proc/cpuinfo is the x86 host's, and
cpuinfo (inside XNNPACK and torch) takes the core's identity from it: it turns some ISA
features on by the MIDR's part number alone ("old kernels do not report UDOT/SDOT"), so a
made-up part number makes XNNPACK run instructions the emulated CPU does not have. A fixed
Neoverse-V1 part (0xd40) did exactly that: dotprod kernels on a Cortex-A72, SIGILL.

Standard library only: it runs on the bare Debian python3, before any venv exists.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

# Linux arch/arm64/kernel/cpuinfo.c, hwcap_str: bit i of AT_HWCAP, then of AT_HWCAP2.
HWCAP = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
    "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
    "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
    "paca", "pacg",
)
HWCAP2 = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
    "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng",
    "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme", "sme_i16i64", "sme_f64f64",
    "sme_i8i32", "sme_f16f32", "sme_b16f32", "sme_f32f32", "sme_fa64", "wfxt", "ebf16",
    "sve_ebf16", "cssc", "rprfm", "sve2p1", "sme2", "sme2p1",
)
AT_HWCAP, AT_HWCAP2 = 16, 26
# mrs x0, midr_el1; ret
READ_MIDR = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")


def feature_names(hwcap: int, hwcap2: int) -> list[str]:
    """Linux's names for the set bits of AT_HWCAP and AT_HWCAP2, in its order."""
    return ([name for i, name in enumerate(HWCAP) if hwcap >> i & 1]
            + [name for i, name in enumerate(HWCAP2) if hwcap2 >> i & 1])


def render(midr: int, features: list[str], nproc: int) -> str:
    """``/proc/cpuinfo`` text for ``nproc`` identical cores, in the kernel's own layout."""
    core = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\n"
            f"CPU implementer\t: {midr >> 24 & 0xFF:#04x}\nCPU architecture: 8\n"
            f"CPU variant\t: {midr >> 20 & 0xF:#x}\nCPU part\t: {midr >> 4 & 0xFFF:#05x}\n"
            f"CPU revision\t: {midr & 0xF}\n\n")
    return "".join(f"processor\t: {i}\n{core}" for i in range(nproc))


def emulated_hwcaps() -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 of this process (qemu's loader sets them for its -cpu)."""
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return int(libc.getauxval(AT_HWCAP)), int(libc.getauxval(AT_HWCAP2))


def emulated_midr() -> int:
    """MIDR_EL1 of the emulated CPU, read by running one ``mrs`` instruction."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(READ_MIDR)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(address)())


if __name__ == "__main__":
    nproc = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    sys.stdout.write(render(emulated_midr(), feature_names(*emulated_hwcaps()), nproc))

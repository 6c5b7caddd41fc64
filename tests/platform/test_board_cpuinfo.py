"""The emulated board's /proc/cpuinfo names the core qemu emulates (issue 21, item 1).

cpuinfo (inside XNNPACK) turns dotprod on by the MIDR part number alone for some cores, so
a made-up part number (the board once showed a Neoverse-V1, 0xd40, whatever the -cpu) made
XNNPACK run SDOT on an emulated Cortex-A72: SIGILL. scripts/platform/arm64-cpuinfo.py now
writes the file from the emulated CPU's own MIDR_EL1 and HWCAP bits. These checks run on
x86_64 with values read from qemu 7.2 (``QEMU_CPU=... python3 arm64-cpuinfo.py``).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.platform.board import SCRIPTS


def _probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arm64_cpuinfo", SCRIPTS / "arm64-cpuinfo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(text: str) -> dict[str, str]:
    first_core = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
                                               first_core.splitlines())}


def test_cortex_a72_shows_its_own_part_and_no_dot_product() -> None:
    probe = _probe()
    # qemu -cpu cortex-a72: MIDR 0x410fd083, AT_HWCAP 0x8fb, AT_HWCAP2 0.
    text = probe.render(0x410FD083, probe.feature_names(0x8FB, 0), 4)
    fields = _fields(text)
    assert fields["CPU implementer"] == "0x41"
    assert fields["CPU part"] == "0xd08"  # Cortex-A72; cpuinfo whitelists 0xd40 for dotprod
    assert fields["CPU variant"] == "0x0" and fields["CPU revision"] == "3"
    assert fields["Features"] == "fp asimd aes pmull sha1 sha2 crc32 cpuid"
    assert text.count("processor\t:") == 4


def test_cortex_a76_and_max_feature_bits() -> None:
    probe = _probe()
    a76 = probe.feature_names(0x119FFB, 0)  # qemu -cpu cortex-a76
    assert "asimddp" in a76 and "sve" not in a76 and "i8mm" not in a76
    max_cpu = probe.feature_names(0xECFFFFFB, 0x7F877FFF)  # qemu 7.2 -cpu max
    assert {"asimddp", "sve", "sve2", "i8mm", "sme"} <= set(max_cpu)
    fields = _fields(probe.render(0x000F0510, max_cpu, 1))
    # qemu's "max" has implementer 0 ("software use") and part 'Q': no core-based guesses.
    assert (fields["CPU implementer"], fields["CPU part"]) == ("0x00", "0x051")

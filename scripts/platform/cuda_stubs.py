"""Stand-ins for the NVIDIA libraries PyPI's aarch64 torch wheel links against (issue 21).

torch 2.13.0 for linux/aarch64 on PyPI is a CUDA build: ``libtorch_cpu.so`` and friends list
``libcudart.so.13``, ``libcudnn.so.9``, ... as NEEDED, and pip normally pulls them from the
``nvidia-*`` packages. This machine's package index does not serve those for aarch64, and the
emulated board has no GPU anyway. So for every NEEDED library that is neither in ``torch/lib``
nor in the root filesystem, this writes a stub shared object with that soname that defines
every symbol (with its symbol version) that torch asks of it. CPython loads extensions with
RTLD_NOW, so each one must resolve; none is called on a CPU-only run except the device-count
queries, which get ``cudaErrorNoDevice`` (100) and make ``torch.cuda.is_available()`` False.

Usage: ``python cuda_stubs.py ROOTFS TORCH_LIB_DIR`` (host readelf, aarch64-linux-gnu-gcc).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

SYSTEM_LIB_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")
CROSS_CC = "aarch64-linux-gnu-gcc"
# The value every stub function returns: cudaErrorNoDevice, a failure every caller handles.
STUB_STATUS = 100
_SYM_LINE = re.compile(
    r"^\s*\d+:\s+[0-9a-f]+\s+\d+\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s+(\S+)"
)


def _elfs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".so" in p.name and p.is_file())


def _needed(elf: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _symbols(elf: Path) -> list[tuple[str, str, str, str, str]]:
    """(type, bind, ndx, name, version) of each dynamic symbol; version "" when none."""
    out = subprocess.run(
        ["readelf", "--dyn-syms", "-W", str(elf)], capture_output=True, text=True
    ).stdout
    rows = []
    for line in out.splitlines():
        m = _SYM_LINE.match(line)
        if not m:
            continue
        kind, bind, ndx, full = m.groups()
        name, _, version = full.partition("@")
        rows.append((kind, bind, ndx, name, version.lstrip("@")))
    return rows


def _present(rootfs: Path, torch_lib: Path) -> dict[str, Path]:
    found: dict[str, Path] = {p.name: p for p in _elfs(torch_lib)}
    for rel in SYSTEM_LIB_DIRS:
        d = rootfs / rel
        if d.is_dir():
            for p in d.iterdir():
                if ".so" in p.name:
                    found.setdefault(p.name, p)
    return found


def plan(rootfs: Path, torch_lib: Path) -> dict[str, dict[str, dict[str, str]]]:
    """For each missing soname: {version: {symbol: kind}} torch needs from it."""
    present = _present(rootfs, torch_lib)
    users = _elfs(torch_lib) + sorted(torch_lib.parent.glob("_C*.so"))
    needed = {elf: _needed(elf) for elf in users}
    missing = sorted({lib for libs in needed.values() for lib in libs if lib not in present})
    defined: set[tuple[str, str]] = set()
    defined_names: set[str] = set()
    providers = {lib for libs in needed.values() for lib in libs if lib in present}
    for lib in sorted(providers | {p.name for p in _elfs(torch_lib)}):
        for _kind, _bind, ndx, name, version in _symbols(present[lib].resolve()):
            if ndx != "UND":
                defined.add((name, version))
                defined_names.add(name)
    stubs: dict[str, dict[str, dict[str, str]]] = {lib: defaultdict(dict) for lib in missing}
    for elf, libs in needed.items():
        own_missing = [lib for lib in libs if lib in stubs]
        if not own_missing:
            continue
        for kind, bind, ndx, name, version in _symbols(elf):
            if ndx != "UND" or bind == "WEAK" or not name:
                continue
            if (version and (name, version) in defined) or (not version and name in defined_names):
                continue
            lib = _owner(version, own_missing)
            stubs[lib][version][name] = kind
    return {lib: dict(v) for lib, v in stubs.items()}


def _owner(version: str, candidates: list[str]) -> str:
    """Which missing library a symbol version names (libcudart.so.13, NVSHMEM, ...)."""
    for lib in candidates:
        if version and (version == lib or version.lower() in lib.lower()):
            return lib
    return candidates[0]


def build(lib: str, versions: dict[str, dict[str, str]], out_dir: Path, work: Path) -> None:
    """Compile one stub with soname ``lib`` defining ``versions`` into ``out_dir``."""
    c_lines = ["static const char stub_text[] = \"cuda stub (issue 21 platform test)\";"]
    script: list[str] = []
    for n, (version, symbols) in enumerate(sorted(versions.items())):
        for i, (name, kind) in enumerate(sorted(symbols.items())):
            ident = f"s{n}_{i}"
            if kind == "OBJECT":
                c_lines.append(f'char {ident}[256] __asm__("{name}");')
                c_lines.append(f'__attribute__((visibility("default"))) char {ident}[256];')
            elif name.endswith(("ErrorString", "GetErrorName", "GetString")):
                c_lines.append(f'const char *{ident}(void) __asm__("{name}");')
                c_lines.append(f"const char *{ident}(void) {{ return stub_text; }}")
            else:
                c_lines.append(f'long {ident}(void) __asm__("{name}");')
                c_lines.append(f"long {ident}(void) {{ return {STUB_STATUS}; }}")
        if version:
            body = " ".join(f"{name};" for name in sorted(symbols))
            script.append(f"{version} {{ global: {body} }};")
    src = work / f"{lib}.c"
    src.write_text("\n".join(c_lines) + "\n")
    cmd = [CROSS_CC, "-shared", "-fPIC", "-O0", "-o", str(out_dir / lib), str(src),
           f"-Wl,-soname,{lib}"]
    if script:
        vs = work / f"{lib}.map"
        vs.write_text("\n".join(script) + "\n")
        cmd.append(f"-Wl,--version-script={vs}")
    subprocess.run(cmd, check=True)


def main(argv: list[str]) -> int:
    """Write the stubs for ``argv = [ROOTFS, TORCH_LIB_DIR]``; print what was stubbed."""
    rootfs, torch_lib = Path(argv[0]), Path(argv[1])
    stubs = plan(rootfs, torch_lib)
    with tempfile.TemporaryDirectory() as tmp:
        for lib, versions in stubs.items():
            build(lib, versions, torch_lib, Path(tmp))
            count = sum(len(s) for s in versions.values())
            print(f"cuda stub {lib}: {count} symbols")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

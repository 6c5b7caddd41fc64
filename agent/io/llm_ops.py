"""ExecuTorch's LLM kernels (``llama::update_cache``, ``llama::custom_sdpa``) for the runtime.

The infer program writes its KV cache and attends over it with these ops
(exporter/layers.py ``cached_attention``). The pip wheel's runtime extension ``_C`` does not
register them: their kernels live in ``libcustom_ops_aot_lib.so`` beside it, which registers
them into the same ``libexecutorch.so`` operator registry when it is loaded. Without it such a
program loads, but its methods fail with "Missing operator: llama::custom_sdpa.out".

On Arm the wheel's library is built for ARMv8.1 and later: it uses LSE atomics (``ldadd``,
``cas``) in code its load runs, so on an ARMv8.0 core (the Raspberry Pi 4's Cortex-A72) the
load itself dies with SIGILL, whatever program comes next (found under qemu -cpu cortex-a72,
tests/platform). It is therefore loaded only where the CPU reports those atomics (AT_HWCAP);
elsewhere bundles are exported with ``--attention masked``, which does not call the ops.

The library is loaded with ctypes, not by importing ``executorch.extension.llm.custom_ops``:
that module imports ``torch._inductor`` (seconds, and tens of MB resident) for the
exporter's meta functions, which the runtime does not need. Loading the library costs about
1 ms and 0.6 MB resident (measured on the 1.5.1 wheel), so agent/io/pybindings.py loads it
before any program, whether or not the program calls the ops (bundles exported before them
don't, and run as they did).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LIBRARY = "libcustom_ops_aot_lib.so"
AT_HWCAP = 16
HWCAP_ATOMICS = 1 << 8  # arm64: LSE atomics (ARMv8.1), which the Arm build of the library uses

_lock = threading.Lock()
_loaded: Any = None  # the ctypes handle, kept so the library is never unloaded
_problem: str | None = None  # why it did not load


def library_path(pybindings_module: Any) -> Path:
    """Where the wheel keeps the LLM ops library, from the ``_C`` extension module's file
    (``executorch/extension/pybindings/_C…so`` → ``executorch/extension/llm/custom_ops/``)."""
    return Path(pybindings_module.__file__).resolve().parents[1] / "llm" / "custom_ops" / LIBRARY


def cpu_problem(machine: str | None = None, hwcap: int | None = None) -> str | None:
    """Why this CPU cannot load the library, or None (x86_64, and Arm cores with LSE atomics).

    Args:
        machine: ``platform.machine()`` (for tests).
        hwcap: the kernel's AT_HWCAP bits (read with getauxval when None; for tests).
    """
    machine = machine or platform.machine()
    if machine not in ("aarch64", "arm64"):
        return None
    if hwcap is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None  # cannot tell: try the load as before
        getauxval = ctypes.CDLL(name).getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        hwcap = int(getauxval(AT_HWCAP))
    if hwcap & HWCAP_ATOMICS:
        return None
    return ("this CPU has no LSE atomics (ARMv8.0, e.g. the Raspberry Pi 4's Cortex-A72), "
            "and ExecuTorch's LLM ops library is built for ARMv8.1+: loading it would kill the "
            "process (SIGILL); bundles for this board need `mobizo-export ... --attention "
            "masked`")


def load_llm_ops(pybindings_module: Any) -> str | None:
    """Register the LLM ops' ExecuTorch kernels in the runtime of ``pybindings_module`` (the
    ``_C`` extension: agent/io/pybindings.py), once per process; returns None, or why not.

    A failure is logged once and not raised: bundles exported before these ops still load and
    run, and a program that needs them then fails to load its methods with the runtime's
    "Missing operator" error, which the caller reports as a BundleError.
    """
    global _loaded, _problem
    with _lock:
        if _loaded is not None or _problem is not None:
            return _problem
        _problem = cpu_problem()
        if _problem is not None:
            log.info("ExecuTorch's LLM ops not loaded: %s", _problem)
            return _problem
        path = library_path(pybindings_module)
        try:
            _loaded = ctypes.CDLL(str(path))
        except OSError as exc:  # missing, or built for another runtime
            _problem = (f"cannot load ExecuTorch's LLM ops library {path} ({exc}); bundles "
                        "whose infer program uses llama::custom_sdpa will not load: reinstall "
                        "executorch from pip")
            log.warning("%s", _problem)
        return _problem


def llm_ops_problem() -> str | None:
    """Why the LLM ops are not available in this process (after :func:`load_llm_ops`), or
    None: a program that calls them cannot run here."""
    return _problem


def registered_llm_ops(pybindings_module: Any) -> list[str]:
    """The ``llama::`` operators the runtime's registry holds (after :func:`load_llm_ops`)."""
    return [name for name in pybindings_module._get_operator_names()
            if name.startswith("llama::")]

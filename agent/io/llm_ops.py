"""ExecuTorch's LLM kernels (``llama::update_cache``, ``llama::custom_sdpa``) for the runtime.

The infer program writes its KV cache and attends over it with these ops
(exporter/layers.py ``cached_attention``). The pip wheel's runtime extension ``_C`` does not
register them: their kernels live in ``libcustom_ops_aot_lib.so`` beside it, which registers
them into the same ``libexecutorch.so`` operator registry when it is loaded. Without it such a
program loads, but its methods fail with "Missing operator: llama::custom_sdpa.out".

The library is loaded with ctypes, not by importing ``executorch.extension.llm.custom_ops``:
that module imports ``torch._inductor`` (seconds, and tens of MB resident) for the
exporter's meta functions, which the runtime does not need. Loading the library costs about
1 ms and 0.6 MB resident (measured on the 1.5.1 wheel), so agent/io/pybindings.py loads it
before any program, whether or not the program calls the ops (bundles exported before them
don't, and run as they did).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LIBRARY = "libcustom_ops_aot_lib.so"

_lock = threading.Lock()
_loaded: Any = None  # the ctypes handle, kept so the library is never unloaded
_problem: str | None = None  # why it did not load


def library_path(pybindings_module: Any) -> Path:
    """Where the wheel keeps the LLM ops library, from the ``_C`` extension module's file
    (``executorch/extension/pybindings/_C…so`` → ``executorch/extension/llm/custom_ops/``)."""
    return Path(pybindings_module.__file__).resolve().parents[1] / "llm" / "custom_ops" / LIBRARY


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
        path = library_path(pybindings_module)
        try:
            _loaded = ctypes.CDLL(str(path))
        except OSError as exc:  # missing, or built for another runtime
            _problem = (f"cannot load ExecuTorch's LLM ops library {path} ({exc}); bundles "
                        "whose infer program uses llama::custom_sdpa will not load: reinstall "
                        "executorch from pip")
            log.warning("%s", _problem)
        return _problem


def registered_llm_ops(pybindings_module: Any) -> list[str]:
    """The ``llama::`` operators the runtime's registry holds (after :func:`load_llm_ops`)."""
    return [name for name in pybindings_module._get_operator_names()
            if name.startswith("llama::")]

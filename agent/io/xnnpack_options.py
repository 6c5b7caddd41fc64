"""XNNPACK's weight cache, switched on from Python: one packed copy of each weight per process.

Each XNNPACK delegate instance packs its own copy of the weights it reads unless the backend's
weight cache is on; then packed weights are shared by every delegate instance in the process
that reads the same named data (keys are the sha256 of the bytes, exporter/lower.py), and
refcounted, so ``prefill`` and ``decode``, a bundle's train methods, and even the train and
infer programs loaded in one process hold one packed copy between them. Measured on the 110M
shape (fp32): ``decode`` +427 MB, then ``prefill`` +427 MB without the cache; +0 with it.

The cache is compiled into the pip wheel (1.5.1) but off by default, and the Python runtime
has no API for backend options. ``libexecutorch.so`` exports the C++ entry point
``executorch::runtime::set_option(const char* backend, Span<BackendOption>)``; this module
calls it through ctypes. ``Span`` is two machine words passed by value (pointer, length),
which the x86-64 and AArch64 C ABIs pass exactly as two integer arguments, and
``BackendOption`` is ``{char key[64]; std::variant<bool, int, std::array<char, 256>>}``
(runtime/backend/options.h): 64 + 256 bytes of storage, then the variant's one-byte index,
padded to 324. :func:`enable_weight_cache` reads the option back to check the layout, and
where anything differs it leaves the runtime as it is (each method then packs its own copy:
correct, only bigger).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)

BACKEND = b"XnnpackBackend"
WEIGHT_CACHE = b"weight_cache_enabled"
_SET = "_ZN10executorch7runtime10set_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
_GET = "_ZN10executorch7runtime10get_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"
_BOOL = 0  # the variant index of bool

_state: bool | None = None  # None: not tried yet in this process


class _BackendOption(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char * 64), ("value", ctypes.c_uint8 * 256),
                ("index", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3)]


def _library() -> ctypes.CDLL:
    import executorch

    path = Path(next(iter(executorch.__path__))) / "lib" / "libexecutorch.so"
    return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)


def _call(fn: object, option: _BackendOption) -> int:
    fn.restype = ctypes.c_uint32  # type: ignore[attr-defined]
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]  # type: ignore[attr-defined]
    return int(fn(BACKEND, ctypes.addressof(option), 1))  # type: ignore[operator]


def _option(value: bool | None = None) -> _BackendOption:
    opt = _BackendOption()
    opt.key = WEIGHT_CACHE
    opt.index = _BOOL
    if value is not None:
        opt.value[0] = int(value)
    return opt


def weight_cache_enabled() -> bool | None:
    """Whether XNNPACK's weight cache is on; None if the option cannot be read."""
    try:
        lib = _library()
        opt = _option()
        if _call(getattr(lib, _GET), opt) != 0 or opt.index != _BOOL:
            return None
        return bool(opt.value[0])
    except (OSError, AttributeError, StopIteration, ImportError):
        return None


def enable_weight_cache() -> bool:
    """Switch XNNPACK's weight cache on for this process (before loading programs).

    Affects only programs loaded afterwards. Idempotent; returns whether the cache is on.
    Where the runtime lacks the entry point or reads back another layout, logs a warning
    and returns False: programs then load with a packed copy per method, as before.
    """
    global _state
    if _state is not None:
        return _state
    from agent.io.pybindings import pybindings

    pybindings()  # loads libexecutorch.so and registers the XNNPACK backend
    before = weight_cache_enabled()
    if before is None:
        log.warning("cannot reach XNNPACK's weight cache option in this ExecuTorch build; "
                    "each loaded method keeps its own packed copy of the weights")
        _state = False
        return _state
    if not before:
        rc = _call(getattr(_library(), _SET), _option(True))
        if rc != 0 or weight_cache_enabled() is not True:
            log.warning("XNNPACK refused its weight cache option (error %d); each loaded "
                        "method keeps its own packed copy of the weights", rc)
            _state = False
            return _state
    _state = True
    return _state


def keep_weight_cache_off() -> None:
    """Load this process's programs without the weight cache (a packed copy per method, as
    before bundle format 4): for benchmarks that measure the difference."""
    global _state
    _state = False

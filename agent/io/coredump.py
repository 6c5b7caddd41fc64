"""No core dumps: a crash must not write the user's text to disk.

The daemon, the inference service and the trainer hold user text in memory (prompts,
replies, corrections, training batches). A core dump would copy it to
``/var/lib/systemd/coredump`` or the working directory, outside the store that purge and
retention clean. The units say ``LimitCORE=0``; each process also makes sure of it itself,
for runs outside systemd (a shell, a container): ``RLIMIT_CORE`` 0 (inherited by the
children: the trainer and the evaluator) and, where the caller can spare ptrace-based
inspection, ``PR_SET_DUMPABLE`` 0 (prctl(2): no dump through any core_pattern, no ptrace or
``/proc/PID/mem``/``maps`` by other processes of the same user). The inference service does
both; the daemon only the limit (its mappings stay inspectable).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None


def disable_core_dumps(*, dumpable: bool = False) -> bool:
    """Set ``RLIMIT_CORE`` to 0 and, unless ``dumpable``, clear the dumpable flag.

    Never raises: a platform without prctl (not Linux) keeps the rlimit alone.

    Returns:
        Whether the process is now non-dumpable (False where only the rlimit could be set).
    """
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if dumpable:
        return False
    libc = _libc()
    if libc is None or libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_DUMPABLE, 0) unavailable; RLIMIT_CORE 0 only")
        return False
    return True


def is_dumpable() -> bool | None:
    """The process's dumpable flag (None where prctl is unavailable)."""
    libc = _libc()
    if libc is None:
        return None
    value = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    return None if value < 0 else bool(value)

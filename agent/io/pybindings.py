"""The ExecuTorch runtime's Python extension, loaded without ``executorch.runtime``'s imports.

``executorch.runtime`` (and ``executorch.extension.pybindings.portable_lib`` under it) imports
``executorch.exir`` for one warning class, and with it sympy and torchao: a process that
loads a program that way sits at ~355 MB resident before it reads a byte of the bundle,
against ~220 MB for ``torch`` and the extension ``_C`` alone (measured on the pip wheel,
1.5.1). ``Runtime.load_program`` is a thin wrapper over ``_C._load_program`` (it passes the
same arguments and wraps no errors), so the service, the trainer and the evaluator call
``_C`` directly through this module; ``_C`` links the same ``libexecutorch.so`` that
agent/io/xnnpack_options.py reaches through ctypes, and registers the XNNPACK backend on import.
"""

from __future__ import annotations

import importlib
from typing import Any

# before _C: it converts tensors through libtorch_python, which needs the torch module set up
# (portable_lib imports torch first for the same reason)
import torch  # noqa: F401

from agent.io.llm_ops import load_llm_ops


def pybindings() -> Any:  # the extension module, untyped
    """The ExecuTorch extension module ``executorch.extension.pybindings._C`` (imported once).

    Raises:
        ModuleNotFoundError: ExecuTorch is not installed (the message says what to install).
    """
    try:
        return importlib.import_module("executorch.extension.pybindings._C")
    except ModuleNotFoundError as exc:  # the message executorch.runtime gives
        raise ModuleNotFoundError(
            "The prebuilt extension module executorch.extension.pybindings._C is not "
            "found. Please reinstall ExecuTorch from pip.") from exc


def load_program(path: str, data_path: str | None = None) -> Any:  # an ExecuTorchProgram
    """Load the program file at ``path`` (weights from the ``.ptd`` at ``data_path`` if given),
    as ``Runtime.get().load_program(path, verification=Verification.Minimal,
    data_path=data_path)`` does: the runtime mmaps the files through its own data loader.

    Minimal verification: the bundle's files are checked against the manifest before they
    load (agent/io/bundle_files.py), so the flatbuffer's internal-consistency walk only costs
    time. Raises what the extension raises (RuntimeError with the runtime's error code).
    """
    c = pybindings()
    load_llm_ops(c)  # the infer program's KV-cache and attention kernels (agent/io/llm_ops.py)
    return c._load_program(path, enable_etdump=False, debug_buffer_size=0,
                           program_verification=c.Verification.Minimal, data_path=data_path)


def method_names(program: Any) -> set[str]:
    """The names of the methods of a loaded program (``Program.method_names``)."""
    return {str(program.get_method_name(i)) for i in range(int(program.num_methods()))}

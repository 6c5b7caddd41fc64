"""The service's front stays torch-free: the ExecuTorch runtime lives in the engine child only
(agent/io/engine.py), so a released service holds no torch."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import agent.io.engine, agent.services.inference.service, agent.cli.serve
heavy = sorted(m for m in ("torch", "executorch", "transformers") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_the_front_and_the_engine_proxy_import_no_torch() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "none"

"""The out-of-the-box run (`make run`) in its short mode: the whole loop, real processes.

Inference service, scripted user, agent daemon on the dev profile and, where mosquitto is
installed, a broker with the fleet view. The test asserts what a newcomer should see: an
adapter published by the daemon and then served by the running service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime


@pytest.mark.timeout(1200)
def test_short_demo_publishes_and_serves_an_adapter(starter_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "agent.demo", "--bundle", str(starter_bundle),
         "--state-dir", str(state), "--short", "--steps", "20",
         "--timeout", "900"],
        capture_output=True, text=True, timeout=1100,
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (state / "logs").glob("*.log"))
    assert out.returncode == 0, f"demo failed:\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}\n{logs}"
    assert "was published and is being served" in out.stdout
    active = json.loads((state / "adapters" / "active").read_text())
    assert active["version"] in out.stdout

"""The inference service's systemd watchdog: WATCHDOG=1 from its main thread (issue 17).

The real ``mobizo-agent serve`` with a stand-in NOTIFY_SOCKET and ``WATCHDOG_USEC``, as
systemd starts it under ``WatchdogSec=``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.daemon_support import REPO, NotifySocket, _env

pytestmark = pytest.mark.runtime


def test_the_service_pings_the_watchdog_after_ready(tmp_path: Path,
                                                    starter_bundle: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--bundle", str(starter_bundle),
         "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--threads", "1"],
        cwd=REPO, env=_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000"),
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        ready = notify.wait_for("READY=1", 120)
        first = notify.wait_for("WATCHDOG=1", 5, after=ready)
        time.sleep(2.0)
        pings = notify.times_of("WATCHDOG=1")
        assert len(pings) >= 3, notify.fields()[-10:]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 1.0, gaps  # always within WATCHDOG_USEC
        assert first > ready
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        notify.close()
    assert proc.returncode == 0

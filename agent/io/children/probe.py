"""Is ``systemd-run --scope`` usable from this process? (the I/O half of trainer_launch)

Usable means: the binary exists, systemd is PID 1 (``/run/systemd/system`` exists, see
sd_booted(3)), and a trial scope with the very limits the bursts will use starts and exits 0.
The trial catches what a static check cannot: an unprivileged user without a polkit grant
("Interactive authentication required"), a systemd too old for ``CPUWeight=idle``, a kernel
without the memory controller. Run it once at daemon start and keep the answer.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.io.children.launch import TrainerLimits, build_trainer_launch

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess[str]]


def usable_systemd_run(
    limits: TrainerLimits,
    *,
    systemd_run: str | None = None,
    true_cmd: str | None = None,
    booted_marker: Path = Path("/run/systemd/system"),
    run: Runner = subprocess.run,
    timeout_s: float = 15.0,
) -> str | None:
    """Return the path of a usable ``systemd-run``, or None when bursts must plain-fork.

    Args:
        limits: the limits bursts will use (the trial scope uses the same properties).
        systemd_run: path to systemd-run; default: looked up on PATH.
        true_cmd: a program that exits 0; default: ``true`` on PATH.
        booted_marker: exists iff systemd is the running init (sd_booted(3)).
        run: ``subprocess.run`` or a stand-in with the same signature.
        timeout_s: how long the trial may take.
    """
    path = systemd_run or shutil.which("systemd-run")
    if not path:
        log.info("systemd-run not found: training bursts fork with nice/SCHED_IDLE/RLIMIT_AS")
        return None
    if not booted_marker.is_dir():
        log.info("systemd is not running: training bursts fork with nice/SCHED_IDLE/RLIMIT_AS")
        return None
    true_path = true_cmd or shutil.which("true") or "/bin/true"
    plan = build_trainer_launch(
        [true_path], limits, systemd_run=path, burst_id=f"probe-{uuid.uuid4().hex[:8]}"
    )
    try:
        done = run(list(plan.argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("systemd-run trial failed (%s): training bursts fork instead", exc)
        return None
    if done.returncode != 0:
        log.info(
            "systemd-run cannot start a scope in %s (%s): training bursts fork with "
            "nice/SCHED_IDLE/RLIMIT_AS instead; see systemd/README.md",
            limits.slice,
            (done.stderr or "").strip().splitlines()[-1:] or f"exit {done.returncode}",
        )
        return None
    return path

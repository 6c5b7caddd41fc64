"""What tests/platform/test_systemd.py asks the container's systemd, and how it waits.

Everything here runs commands in a booted :class:`~tests.platform.container.Container`
(``box.sh``); nothing touches the host's own init. A burst is observed from the outside: the
daemon's child process, its ``/proc/PID/cgroup`` and the unit systemd put it in.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from tests.platform.container import Container

VENV = "/opt/mobizo-agent/venv"
AGENT_BIN = f"{VENV}/bin/mobizo-agent"
CONFIG = "/etc/mobizo-agent/agent.toml"
RULES_DIR = "/etc/polkit-1/rules.d"
# A test-only stand-in for what systemd >= 257 lets the shipped, narrow rule grant: on 252
# StartTransientUnit gives polkit no unit name, so only a rule that ignores it can match.
BROAD_RULE = (
    'polkit.addRule(function(action, subject) {\n'
    '  if (action.id == "org.freedesktop.systemd1.manage-units" && subject.user == "mobizo")\n'
    '    return polkit.Result.YES;\n'
    '});\n')


def show(box: Container, unit: str, *props: str) -> dict[str, str]:
    """``systemctl show UNIT -p ...`` as a dict."""
    out = box.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_prop(box: Container, unit: str, prop: str, want: set[str], timeout: float) -> str:
    """Poll ``prop`` until it is one of ``want`` (or the time is up); its last value."""
    deadline, value = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        value = show(box, unit, prop).get(prop, "")
        if value in want:
            return value
        time.sleep(2)
    return value


def wait_status(box: Container, needle: str, timeout: float) -> str:
    """Poll the agent's ``STATUS=`` until it contains ``needle``; the last one seen."""
    deadline, status = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status = show(box, "mobizo-agent", "StatusText").get("StatusText", "")
        if needle in status:
            return status
        time.sleep(1)
    return status


def journal(box: Container, unit: str, lines: int = 60, since: str = "") -> str:
    """The unit's last journal lines of this boot (``since``: a cursor from :func:`mark`).

    The cached root filesystem keeps the journals of earlier runs: ``-b`` leaves them out.
    """
    extra = f" --after-cursor='{since}'" if since else ""
    return box.sh(f"journalctl -b --no-pager -o cat -n {lines} -u {unit}{extra}",
                  check=False).stdout


def mark(box: Container) -> str:
    """A cursor at the journal's end: what is logged after it is news (exact, unlike
    ``--since``, whose one-second resolution lets the previous check's lines in)."""
    out = box.sh("journalctl -b --no-pager -n 1 --show-cursor -o cat").stdout
    cursors = [line.split("cursor: ", 1)[1] for line in out.splitlines() if "cursor: " in line]
    return cursors[-1].strip() if cursors else ""


def append_config(box: Container, text: str) -> None:
    """Append TOML to the agent's config (an edited file install will keep)."""
    box.sh(f"printf '%s' '{text}' >> {CONFIG}")


def restart_agent(box: Container) -> str:
    """Restart mobizo-agent (its systemd-run probe runs at start); the journal's since-mark."""
    since = mark(box)
    box.sh("systemctl restart mobizo-agent", timeout=300)
    assert wait_prop(box, "mobizo-agent", "ActiveState", {"active"}, 120) == "active"
    return since


@dataclass
class BurstSight:
    """One look at a running trainer: its pid, cgroup lines and the unit it was put in."""

    pid: int
    cgroup: dict[str, str]  # hierarchy ("name=systemd", "memory", "" for v2) -> path
    argv: str

    @property
    def unit_path(self) -> str:
        """The path systemd tracks it under (name=systemd on v1/hybrid, else the v2 one)."""
        return self.cgroup.get("name=systemd") or self.cgroup.get("", "")


def start_burst(box: Container, ignore: str = "idle") -> str:
    """``mobizo-agent train-now`` over the control socket (thermal and memory still apply).

    Its answer is returned, not checked: the scheduler may have started the burst already.
    """
    proc = box.sh(f"{AGENT_BIN} train-now --config {CONFIG} --ignore {ignore}", check=False,
                  timeout=120)
    return proc.stdout + proc.stderr


def import_examples(box: Container, jsonl: str) -> None:
    """``mobizo-agent data import`` as the service user (the store is 0700 mobizo)."""
    box.sh(f"install -m 0644 {jsonl} /var/tmp/platform-data.jsonl && runuser -u mobizo -- "
           f"{AGENT_BIN} data --state-dir /var/lib/mobizo-agent import "
           "/var/tmp/platform-data.jsonl")


def see_trainer(box: Container, timeout: float = 180) -> BurstSight | None:
    """The daemon's training child once it IS ``agent train`` (None if none showed up).

    The child starts as ``lower_exec`` (which lowers itself), which execs ``systemd-run``
    (scope path), which execs the trainer: only the last one is where systemd put the burst.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        main = show(box, "mobizo-agent", "MainPID")["MainPID"]
        out = box.sh(f"for p in $(ps -o pid= --ppid {main}); do echo \"$p $(tr '\\0' ' ' "
                     "< /proc/$p/cmdline)\"; cat /proc/$p/cgroup; done", check=False).stdout
        sight = _parse_children(out)
        if sight is not None and sight.argv.split()[1:4] == ["-m", "agent", "train"]:
            return sight
        time.sleep(1)
    return None


def _parse_children(out: str) -> BurstSight | None:
    sight: BurstSight | None = None
    for line in out.splitlines():
        head = line.split(" ", 1)
        if head[0].isdigit():
            sight = BurstSight(int(head[0]), {}, head[1] if len(head) > 1 else "")
        elif sight is not None and line.count(":") >= 2:
            _, hierarchy, path = line.split(":", 2)
            sight.cgroup[hierarchy] = path
    return sight


def wait_burst_end(box: Container, since: str, timeout: float = 400) -> str:
    """Wait for the daemon's "run ... ended: OUTCOME" (training and evaluation done).

    The journal, not STATUS=: "last run published" lasts one tick before the next reason.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [line for line in journal(box, "mobizo-agent", 300, since=since).splitlines()
                 if re.search(r"run \S+ ended: ", line)]
        if ended:
            return ended[-1]
        time.sleep(2)
    return ""


def memory_cap_in_kernel(box: Container, sight: BurstSight) -> dict[str, str]:
    """What the kernel enforces on the trainer's memory cgroup (v2 or v1), with the mounts."""
    v2_path, v1_path = sight.cgroup.get(""), sight.cgroup.get("memory")
    script = ("grep -E ' /sys/fs/cgroup(/memory|/unified)? ' /proc/mounts; "
              "echo controllers=$(cat /sys/fs/cgroup/cgroup.controllers "
              "/sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)")
    if v2_path is not None:
        script += f"; echo v2_memory_max=$(cat /sys/fs/cgroup{v2_path}/memory.max 2>&1)"
    if v1_path is not None:
        script += (f"; echo v1_limit=$(cat /sys/fs/cgroup/memory{v1_path}/memory.limit_in_bytes"
                   " 2>&1)")
    out = box.sh(script, check=False).stdout
    facts = {"v1_memory_path": v1_path or "", "v2_path": v2_path or "", "mounts": ""}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("controllers", "v2_memory_max", "v1_limit"):
            facts[key] = value
        else:
            facts["mounts"] += line + "; "
    return facts

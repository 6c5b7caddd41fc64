"""Start the board's Flower SuperNode from ``[federated]`` (systemd/mobizo-supernode.service).

``python -m agent.federated.supernode_launch --config /etc/mobizo-agent/agent.toml`` reads
the agent's config and execs ``flower-supernode`` with the SuperLink address, TLS (the CA in
``federated.root_certificates``, or ``--insecure`` towards a loopback SuperLink only: the
config refuses plaintext elsewhere) and the node config the device's ClientApp reads: the
daemon's control socket (agent/federated/supernode_app.py). ``--check`` only says whether
the SuperNode should run: exit 0 when ``[federated] enabled``, 1 when not (the unit's
``ExecCondition=``: a device that did not opt in never starts one). Anything else is 255:
systemd reads 1..254 from an ExecCondition as "skip", so a config it cannot read or a venv
missing a dependency must not pass for "not opted in" and leave the unit quietly inactive.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AgentConfig

SOCKET_NAME = "control.sock"  # agent.services.daemon.control.SOCKET_NAME (same layer: no import)
EXIT_DISABLED = 1
EXIT_BROKEN = 255  # ExecCondition: "fail the unit", not "skip it"


def supernode_argv(cfg: AgentConfig, executable: str) -> list[str]:
    """``flower-supernode``'s command line for ``cfg``'s ``[federated]`` section."""
    fed = cfg.federated
    socket = cfg.paths.state_dir / SOCKET_NAME
    argv = [executable, "--superlink", fed.superlink]
    if fed.root_certificates is not None:
        argv += ["--root-certificates", str(fed.root_certificates)]
    else:
        argv.append("--insecure")  # loopback only: FederatedConfig refuses it elsewhere
    argv += ["--node-config", f'control-socket="{socket}"']
    return argv


def main(argv: list[str] | None = None) -> int:
    """Exec the SuperNode (or, with ``--check``, say whether it should run)."""
    parser = argparse.ArgumentParser(prog="python -m agent.federated.supernode_launch")
    parser.add_argument("--config", type=Path, default=None, help="the agent's agent.toml")
    parser.add_argument("--check", action="store_true",
                        help="exit 0 if [federated] enabled, 1 if not; start nothing")
    parser.add_argument("--print", action="store_true", dest="show",
                        help="print the SuperNode's command line instead of running it")
    args = parser.parse_args(argv)
    try:
        # imported here so that a venv missing a dependency fails the unit (255), not skips it
        from agent.config.loader import load_config
        from agent.errors import MobizoError
    except ImportError as exc:
        print(f"error: the agent's environment is broken ({exc}): reinstall with "
              "`mobizo-agent install`", file=sys.stderr)
        return EXIT_BROKEN
    try:
        cfg = load_config(args.config).config
    except MobizoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    if not cfg.federated.enabled:
        print("federated learning is off ([federated] enabled = false): no SuperNode",
              file=sys.stderr)
        return EXIT_DISABLED
    if args.check:
        return 0
    exe = str(Path(sys.executable).with_name("flower-supernode"))
    command = supernode_argv(cfg, exe)
    if args.show:
        print(" ".join(command))
        return 0
    os.execv(exe, command)  # the unit's main process becomes the SuperNode itself
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())

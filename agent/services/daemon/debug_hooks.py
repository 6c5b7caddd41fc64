"""Test-only commands, registered only when the daemon runs with ``--debug-hooks``.

``debug-hang`` makes the main loop sleep (the watchdog test), ``debug-publish-delay`` makes
the registry sleep at one publish stage (so a test can ``kill -9`` the daemon mid-publish
deterministically). Without ``--debug-hooks`` neither name exists on the control socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import Field

from agent.core.fleet_documents import WireIn
from agent.services.daemon.commands import CommandTable, DaemonCommand, Reply

log = logging.getLogger(__name__)


class HangArgs(WireIn):
    """How long the main loop hangs."""

    seconds: float = Field(default=5.0, ge=0.0, le=3600.0)


class PublishDelayArgs(WireIn):
    """At which registry stage publishing sleeps, and how long."""

    stage: str = Field(default="staged", max_length=64)
    seconds: float = Field(default=30.0, ge=0.0, le=3600.0)


class DebugHooks:
    """The debug hooks' state and their two commands.

    Args:
        sleep: how to sleep (injected so a test need not wait).
    """

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep
        self.hang_s = 0.0
        self.publish_delay: tuple[str, float] | None = None

    def table(self) -> CommandTable:
        """The debug rows of the command table."""
        return {
            "debug-hang": DaemonCommand(HangArgs, self.hang),
            "debug-publish-delay": DaemonCommand(PublishDelayArgs, self.delay_publish),
        }

    def hang(self, args: HangArgs) -> Reply:
        """Hang the main loop once, right after this tick's commands."""
        self.hang_s = args.seconds
        return {"message": f"main loop will hang for {self.hang_s} s"}

    def delay_publish(self, args: PublishDelayArgs) -> Reply:
        """Sleep at registry stage ``args.stage`` from now on."""
        self.publish_delay = (args.stage, args.seconds)
        return {"message": f"publishing will sleep at {args.stage}"}

    def after_commands(self) -> None:
        """Called by the main loop after its commands: hang if asked."""
        if self.hang_s:
            hang, self.hang_s = self.hang_s, 0.0
            log.warning("debug hang: main loop sleeping %.1f s", hang)
            self.sleep(hang)

    def stage_hook(self, stage: str) -> None:
        """Called by the registry at each publish stage."""
        delay = self.publish_delay
        if delay is not None and delay[0] == stage:
            log.warning("debug: publish sleeping %.1f s at stage %s", delay[1], stage)
            self.sleep(delay[1])

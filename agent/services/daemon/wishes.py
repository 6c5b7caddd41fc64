"""What the user asked of the daemon: a pause (and why), or a run now despite the policy.

One small object, owned by the daemon and changed only on its main loop (by the command
handlers, :mod:`agent.services.daemon.commands`, and by the run lifecycle when a manual run
ends); the policy, the bursts and the fleet side read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.policy import TrainNow


@dataclass
class UserWishes:
    """The user's standing wishes.

    Attributes:
        paused: why training is paused (None: not paused).
        manual: a manual "train now" until its run ends (None: the policy decides).
    """

    paused: str | None = None
    manual: TrainNow | None = None

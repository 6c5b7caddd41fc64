"""The agent's state machine and the model of its machine-readable status file.

States: idle, waiting(reason), training(step/total, loss), evaluating, publishing, paused,
error — with the last burst's metrics. The daemon writes ``<state_dir>/status.json``
atomically on every change; ``mobizo-agent status`` and the fleet link read it.

Pure: the model and the transitions. The file itself is read and written by
agent/io/status_file.py, so every writer and reader agree on this one model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STATUS_FORMAT_VERSION = 1
STATUS_FILE = "status.json"

AgentState = Literal["idle", "waiting", "training", "evaluating", "publishing", "paused", "error"]

# Which state may follow which. paused/error/idle are reachable from anywhere (a pause command,
# a crash, a shutdown); the burst path is waiting -> training -> evaluating -> publishing.
# evaluating is also reachable from waiting/idle: an eval-only pass (e.g. a resumed run whose
# steps are already done, or a candidate left over from before a restart).
TRANSITIONS: dict[str, frozenset[str]] = {
    "idle": frozenset({"idle", "waiting", "training", "evaluating"}),
    "waiting": frozenset({"waiting", "training", "evaluating"}),
    "training": frozenset({"training", "evaluating", "waiting"}),
    "evaluating": frozenset({"evaluating", "publishing", "waiting"}),
    "publishing": frozenset({"publishing", "waiting"}),
    "paused": frozenset({"paused", "waiting"}),
    "error": frozenset({"error", "waiting"}),
}
_FROM_ANYWHERE = frozenset({"idle", "paused", "error"})

BurstOutcome = Literal["published", "rejected", "stopped", "failed", "rolled_back"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Progress(_Model):
    """Where a running burst is."""

    step: int = Field(ge=0, description="ZO steps done in this run (resumes continue counting)")
    total: int = Field(ge=0, description="steps this burst is allowed")
    loss: float | None = Field(default=None, description="latest mean training loss")
    started_at: float | None = Field(default=None, description="burst start, Unix time")


class BurstMetrics(_Model):
    """The outcome of the last finished burst."""

    started_at: float = Field(description="Unix time")
    ended_at: float = Field(description="Unix time")
    steps: int = Field(ge=0, description="ZO steps done in this burst")
    outcome: BurstOutcome
    reason: str = Field(default="", description="why it ended that way")
    train_loss_start: float | None = None
    train_loss_end: float | None = None
    heldout_loss_candidate: float | None = None
    heldout_loss_active: float | None = None
    adapter_version: str | None = Field(default=None, description="published/candidate id")
    steps_per_s: float | None = None


class AgentStatus(_Model):
    """The whole status document (``status.json``)."""

    format_version: int = STATUS_FORMAT_VERSION
    state: AgentState = "idle"
    reason: str = Field(default="", description="human line: why this state")
    since: float = Field(default=0.0, description="Unix time the state was entered")
    updated_at: float = Field(default=0.0, description="Unix time of this document")
    progress: Progress | None = None
    last_burst: BurstMetrics | None = None
    active_adapter: str | None = None
    pid: int | None = None
    version: str = ""
    blocked_by: tuple[str, ...] = Field(default=(), description="constraints that block training")

    def to(self, state: AgentState, now: float, reason: str = "", **changes: object) -> AgentStatus:
        """The status after moving to ``state`` (pure; returns a new object).

        Staying in the same state keeps ``since``; progress is dropped when leaving training.

        Raises:
            ValueError: the transition is not allowed.
        """
        if state not in _FROM_ANYWHERE and state not in TRANSITIONS[self.state]:
            raise ValueError(f"agent state cannot go from {self.state} to {state}")
        fields: dict[str, object] = {
            "state": state, "reason": reason, "updated_at": now,
            "since": self.since if state == self.state else now,
        }
        if state != "training":
            fields["progress"] = None
        fields.update(changes)
        return self.model_copy(update=fields)

    def headline(self) -> str:
        """One line for humans: ``training 12/50, loss 2.314`` / ``waiting: on battery ...``."""
        if self.state == "training" and self.progress is not None:
            text = f"training {self.progress.step}/{self.progress.total}"
            if self.progress.loss is not None:
                text += f", loss {self.progress.loss:.4g}"
            return text
        if not self.reason:
            return self.state
        # Policy reasons already start with the state word ("waiting: on battery 54% < 80%").
        if self.reason.startswith(f"{self.state}:"):
            return self.reason
        return f"{self.state}: {self.reason}"

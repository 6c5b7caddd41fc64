"""The federated round job: what the daemon hands its round child (issue 20).

The daemon (torch-free) snapshots its store, writes a :class:`FederatedRoundJob` as JSON and
starts ``python -m agent.federated.device_round --job <file>``
(:mod:`agent.services.daemon.federated_round`); the child runs the round's P-RGE steps with
the bundle's ExecuTorch train program and writes its reply (a
:class:`agent.federated.messages.DeviceReply` as JSON) to ``reply``. The round's own
instructions travel as the JSON object the server sent: the child validates them, so a bad
one is declined with a reason rather than crashing the daemon. Pure data, like
:mod:`agent.core.train_job`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.core.train_job import RuntimeBackend
from agent.core.zo_settings import Mode

# Where the daemon keeps a device's federated state (global copy, personal delta, its round).
FEDERATED_DIR = "federated"
ROUND_JOB_FILE = "round_job.json"
ROUND_REPLY_FILE = "round_reply.json"
# The served adapter (global + personal) a trained round leaves, and its held-out losses.
CANDIDATE_DIR = "candidate"
ROUND_EVAL_FILE = "round_eval.json"
# What the round child keeps between rounds (a purge removes all three: a personal delta
# records no data window).
STATE_FILE = "state.json"
GLOBAL_FILE = "global.npy"
PERSONAL_FILE = "personal.npy"


class FederatedRoundJob(BaseModel):
    """One round for the round child.

    Attributes:
        bundle: the model bundle directory (its train program and initial adapter).
        data: the store's training snapshot (JSON Lines, user content, removed after).
        state_dir: the device's federated state (global.npy, personal.npy, state.json).
        reply: where the child writes its reply.
        instructions: the server's round instructions, as sent (validated by the child).
        salt: which pool seeds this device's steps draw (its Flower node id).
        batch: the batch size (``[training] batch``; 0: the bundle's default).
        mode: how the round's pool directions are evaluated (``[training] mode``): the same
            estimator in every mode, so the same accumulators to float rounding.
        backend: the runtime (``[training] backend``).
        threads: runtime threads (``[device] threads``), None: the default.
        max_steps: the most steps a round may ask (``[federated] max_steps_per_round``).
        max_pool: the largest pool accepted (``[federated] max_pool_size``).
        heldout: the store's held-out snapshot; with ``against``, a trained round also
            writes the served adapter and both held-out losses (the daemon's eval gate).
        against: the adapter serving now (the gate compares with it).
    """

    model_config = ConfigDict(extra="forbid")

    bundle: Path
    data: Path
    state_dir: Path
    reply: Path
    instructions: dict[str, Any]
    salt: int = Field(ge=0, lt=1 << 63)
    batch: int = Field(default=0, ge=0, le=64)
    mode: Mode = "prge"
    backend: RuntimeBackend = "executorch"
    threads: int | None = Field(default=None, ge=1, le=256)
    max_steps: int = Field(default=64, ge=1, le=10_000)
    max_pool: int = Field(default=4096, ge=1, le=65_536)
    heldout: Path | None = None
    against: Path | None = None

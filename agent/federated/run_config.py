"""The ServerApp's settings, read from Flower's run config (``[tool.flwr.app.config]``).

A real deployment starts the ServerApp with ``flwr run fleet_app <connection>``; Flower hands
it ``context.run_config``: the app's ``[tool.flwr.app.config]`` table (fleet_app/pyproject.toml)
with ``--run-config 'key=value'`` overrides on top. Keys are kebab-case as Flower's own apps
name them. Every key is checked here, with its bounds, and a wrong or missing one is an error
naming the key and how to set it, before any round is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError
from agent.federated.pool import MAX_POOL
from agent.federated.strategy import FleetSettings


class FleetRunConfig(BaseModel):
    """The fleet's ServerApp settings (one run config key per field, kebab-case)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    num_server_rounds: int = Field(3, ge=1, le=100_000, alias="num-server-rounds",
                                   description="rounds this run sends (after any stored)")
    bundle_id: str = Field(alias="bundle-id", min_length=1,
                           description="the model bundle every device must run")
    pool_size: int = Field(1024, ge=1, le=MAX_POOL, alias="pool-size",
                           description="K, the seeds in a round's pool")
    steps: int = Field(4, ge=1, le=100_000, description="P-RGE steps per device per round")
    q: int = Field(2, ge=1, le=64, description="directions per step")
    lr: float = Field(1e-4, gt=0, le=1.0, description="ZO-SGD learning rate")
    eps: float = Field(1e-2, gt=0, le=1.0, description="perturbation scale")
    clip: float = Field(100.0, gt=0, le=1e6, description="bound on |g| and on each slot")
    seed: int = Field(0, ge=0, lt=1 << 63, description="the run seed: the pools derive from it")
    noise: float = Field(0.0, ge=0, le=100, description="Gaussian noise multiplier (privacy.py)")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta epsilon is stated at")
    fedkseed_pro: bool = Field(False, alias="fedkseed-pro",
                               description="FedKSeed-Pro: one pool, seeds drawn by importance")
    round_timeout_s: float = Field(1800.0, gt=0, le=7 * 86400, alias="round-timeout-s",
                                   description="how long a round waits for replies")
    min_nodes: int = Field(1, ge=1, le=100_000, alias="min-nodes",
                           description="devices a round waits for before it is sent")
    wait_nodes_s: float = Field(60.0, ge=0, le=86400, alias="wait-nodes-s",
                                description="how long a round waits for min-nodes devices")
    state_file: str = Field("", alias="state-file",
                            description="the round history kept across restarts ('': none)")
    excluded_nodes: str = Field("", alias="excluded-nodes",
                                description="comma-separated node ids never aggregated")

    @field_validator("excluded_nodes")
    @classmethod
    def _node_ids(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if not part.isdigit():
                raise ValueError(f"{part!r} is not a node id (comma-separated integers)")
        return value

    def excluded(self) -> set[int]:
        """The excluded node ids."""
        return {int(p) for p in self.excluded_nodes.split(",") if p.strip()}

    def state_path(self) -> Path | None:
        """The state file, or None when the history is kept in memory only."""
        return Path(self.state_file).expanduser() if self.state_file else None

    def settings(self) -> FleetSettings:
        """The strategy's fixed settings."""
        return FleetSettings(bundle_id=self.bundle_id, pool_size=self.pool_size,
                             steps=self.steps, q=self.q, lr=self.lr, eps=self.eps,
                             clip=self.clip, seed=self.seed, noise=self.noise,
                             delta=self.delta, fedkseed_pro=self.fedkseed_pro)


def read_run_config(run_config: dict[str, Any]) -> FleetRunConfig:
    """The validated settings of Flower's ``context.run_config``.

    Raises:
        ConfigError: a key is unknown, missing, of the wrong type or out of bounds; the
            message names it and says how to set it.
    """
    try:
        return FleetRunConfig.model_validate(dict(run_config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "run config"
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError(
            "the fleet's run config is invalid: " + "; ".join(problems) + ". Set a value in "
            "[tool.flwr.app.config] of fleet_app/pyproject.toml or with "
            "`flwr run fleet_app <connection> --run-config 'key=value'` (strings in double "
            "quotes: 'bundle-id=\"...\"')") from None

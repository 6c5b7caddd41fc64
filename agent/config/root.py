"""The root config model: one field per section, plus the checks that span sections."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from agent.config.adapters import AdaptersConfig
from agent.config.base import Section
from agent.config.constraints import ConstraintsConfig
from agent.config.daemon import DaemonConfig
from agent.config.data import DataConfig
from agent.config.device import DeviceConfig
from agent.config.federated import FederatedConfig
from agent.config.logging_config import LoggingConfig
from agent.config.mqtt import MqttConfig
from agent.config.paths import PathsConfig
from agent.config.problems import Problems
from agent.config.service import InferenceConfig, ServiceConfig
from agent.config.training import TrainingConfig


class AgentConfig(Section):
    """Everything ``mobizo-agent run`` reads from ``agent.toml``. An empty file is valid."""

    device: DeviceConfig = Field(default_factory=DeviceConfig, description="board and sensor roots")
    constraints: ConstraintsConfig = Field(
        default_factory=ConstraintsConfig, description="when a training burst may run"
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="the ZO optimiser and burst bounds"
    )
    data: DataConfig = Field(default_factory=DataConfig, description="interaction store and splits")
    adapters: AdaptersConfig = Field(
        default_factory=AdaptersConfig, description="adapter registry and eval gate"
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig, description="model bundle and inference service"
    )
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="inference service settings"
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="optional fleet link")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="log level, journal")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="state directory")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="daemon timeouts")
    federated: FederatedConfig = Field(
        default_factory=FederatedConfig, description="fleet learning on Flower (opt-in)"
    )

    # Resolved locations: a section leaves them empty to mean "under the state directory".
    @property
    def store_path(self) -> Path:
        return self.data.store_path or self.paths.state_dir / "interactions.sqlite3"

    @property
    def registry_dir(self) -> Path:
        return self.adapters.registry_dir or self.paths.state_dir / "adapters"

    @property
    def bundle_dir(self) -> Path:
        return self.service.bundle_dir or self.paths.state_dir / "bundle"

    @model_validator(mode="after")
    def _cross_section(self) -> AgentConfig:
        problems: list[tuple[str, str, object]] = []
        cap = self.training.memory_max_mb
        if cap and cap > self.constraints.min_available_memory_mb:
            problems.append((
                "training.memory_max_mb",
                "the trainer may use more memory than a burst requires to be free; raise "
                f"constraints.min_available_memory_mb to at least {cap} or lower this cap",
                cap,
            ))
        if _abs(self.store_path) == _abs(self.registry_dir):
            problems.append((
                "adapters.registry_dir",
                "must differ from data.store_path (the store is a file, the registry a "
                "directory)",
                str(self.registry_dir),
            ))
        if _abs(self.registry_dir).is_relative_to(_abs(self.bundle_dir)):
            problems.append((
                "adapters.registry_dir",
                f"must not be inside the model bundle {self.bundle_dir} (bundles are "
                "replaced whole on update; trained adapters must survive that)",
                str(self.registry_dir),
            ))
        if problems:
            raise Problems(problems)
        return self


def _abs(path: Path) -> Path:
    # Lexical only: validation must not depend on what exists on this machine.
    return Path(os.path.abspath(path))

"""The agent's configuration: strict pydantic sections, board profiles, runtime overrides.

Load order (later wins): built-in defaults ← board profile ``firmware_configs/<name>.toml`` ←
``agent.toml`` ← runtime overrides (``<state_dir>/overrides.json``, written by the fleet link).
Pure pydantic + stdlib: safe to import in the daemon (no torch).
"""

from agent.config.loader import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    LoadedConfig,
    apply_overrides,
    default_config_path,
    diff,
    load_config,
    reload_config,
    with_overrides,
)
from agent.config.override_file import read_override_version, read_overrides, write_overrides
from agent.config.overrides import replace_overrides, update_overrides
from agent.config.problems import ConfigValidationError, Problem
from agent.config.root import AgentConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "ConfigValidationError",
    "LoadedConfig",
    "Problem",
    "apply_overrides",
    "default_config_path",
    "diff",
    "load_config",
    "read_override_version",
    "read_overrides",
    "replace_overrides",
    "reload_config",
    "update_overrides",
    "with_overrides",
    "write_overrides",
]

"""What the fleet may set through a desired config, and in which direction (docs/security.md).

The fleet tunes training (hyperparameters, schedule, logging) and may tighten the guards that
protect the board, never loosen them below the local config (defaults ← board profile ←
``agent.toml``), which is the ceiling. Everything that decides where files live, which sensors
are read, which broker is reached with which credentials, or how the services run is
local-only. The same check runs when a desired config arrives and when saved overrides are
replayed at boot, so an override file written by an older agent cannot smuggle them in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.config.root import AgentConfig
from agent.config.tomlfile import leaf_paths

# Whole sections the fleet can never change.
LOCAL_ONLY_SECTIONS = frozenset({"mqtt", "paths", "device", "service", "inference", "daemon"})

# Single keys of otherwise fleet-settable sections: locations, sensor selection, trainer kind.
LOCAL_ONLY_KEYS = frozenset({
    "data.store_path",
    "adapters.registry_dir",
    "constraints.thermal_zones",
    "constraints.power_supplies",
    "training.backend",
})


def _at_least(new: Any, local: Any) -> bool:
    return bool(new >= local)


def _at_most(new: Any, local: Any) -> bool:
    return bool(new <= local)


def _true_if_local(new: Any, local: Any) -> bool:
    return bool(new) or not local


def _cap(new: Any, local: Any) -> bool:
    # 0 means "no cap": the fleet may set a cap where there is none, or lower one.
    return bool(new > 0 and (local == 0 or new <= local))


# Guards: the fleet's value must protect at least as much as the local one.
_GUARDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "constraints.require_charging_or_mains": (_true_if_local, "may only be switched on"),
    "constraints.battery_start_pct": (_at_least, "may only be raised"),
    "constraints.battery_stop_pct": (_at_least, "may only be raised"),
    "constraints.thermal_start_c": (_at_most, "may only be lowered"),
    "constraints.thermal_stop_c": (_at_most, "may only be lowered"),
    "constraints.min_available_memory_mb": (_at_least, "may only be raised"),
    "constraints.stop_available_memory_mb": (_at_least, "may only be raised"),
    "constraints.max_load_per_core": (_cap, "may only be set (> 0) or lowered"),
    "constraints.stop_on_user_activity": (_true_if_local, "may only be switched on"),
    "training.max_seconds_per_burst": (_at_most, "may only be lowered"),
    "training.memory_max_mb": (_cap, "may only be set (> 0) or lowered"),
    "training.nice": (_at_least, "may only be raised"),
    "training.sched_idle": (_true_if_local, "may only be switched on"),
}


def local_only_problems(document: Mapping[str, Any]) -> list[str]:
    """Each key of ``document`` (nested) that only the local config may set, as an error line.

    Keys that do not exist at all are left to schema validation (it names them as unknown).
    """
    problems: list[str] = []
    for path in leaf_paths(document):
        section = path.split(".", 1)[0]
        if section in LOCAL_ONLY_SECTIONS or any(
            path == key or path.startswith(key + ".") for key in LOCAL_ONLY_KEYS
        ):
            problems.append(
                f"{path}: local-only setting; the fleet may not change it "
                "(set it in the device's agent.toml)"
            )
    return problems


def loosened_problems(
    local: AgentConfig, fleet: AgentConfig, document: Mapping[str, Any]
) -> list[str]:
    """Each guard the fleet's ``document`` sets looser than the ``local`` config, as an error.

    Args:
        local: the declared config (defaults, board profile, file): the ceiling.
        fleet: the validated config with the fleet's document applied.
        document: the fleet's document (nested); only the guards it sets are judged.
    """
    problems: list[str] = []
    set_paths = set(leaf_paths(document))
    for path, (protects, rule) in _GUARDS.items():
        if path not in set_paths:
            continue
        section, name = path.split(".")
        new = getattr(getattr(fleet, section), name)
        mine = getattr(getattr(local, section), name)
        if not protects(new, mine):
            problems.append(
                f"{path}: {new!r} is looser than this device's own setting {mine!r}; the fleet "
                f"{rule}"
            )
    return problems

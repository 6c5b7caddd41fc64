"""Reading a :class:`~agent.core.train_job.TrainJob` document (``train --job FILE``).

The daemon writes the document (:func:`agent.services.daemon.children.trainer_argv`); the
trainer child reads it back with the same model, so a setting cannot change name or bound on
the way. A bad document is refused with the file and each bad field named.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from agent.core.train_job import TrainJob
from agent.errors import ConfigError


def field_problems(exc: ValidationError, flag_style: bool = False) -> str:
    """Each error of ``exc`` as ``field: message (got value)``, joined by ``; ``.

    Args:
        exc: a validation error of :class:`TrainJob`.
        flag_style: name the fields as command-line flags (``--warmup-steps``).
    """
    parts = []
    for e in exc.errors(include_url=False):
        name = ".".join(map(str, e["loc"])) or "job"
        if flag_style and e["loc"]:
            name = "--" + name.replace("_", "-")
        got = f" (got {e['input']!r})" if e["loc"] and "input" in e else ""
        parts.append(f"{name}: {e['msg']}{got}")
    return "; ".join(parts)


def read_train_job(path: Path) -> TrainJob:
    """The job in ``path``.

    Raises:
        ConfigError: the file is missing or unreadable, not JSON, or a field is unknown, of
            the wrong type or out of bounds (each one named).
    """
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the training job {path}: {exc.strerror or exc}") from exc
    try:
        return TrainJob.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"invalid training job {path}: {field_problems(exc)}") from exc

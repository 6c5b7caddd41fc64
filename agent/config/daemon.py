"""[daemon] section: how long the daemon waits for its children and for the inference service,
and where it serves its Prometheus metrics (``metrics_listen``, off by default).

These used to be command-line timings; they are settings of a deployment (a slow SD card needs
a longer checkpoint grace), so they live in the config like every other setting. Tests still
pass shorter values (``mobizo-agent run --stop-grace-seconds`` and friends override them).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.config.base import Section


class DaemonConfig(Section):
    """Timeouts and backoffs of the agent daemon's run lifecycle."""

    stop_grace_s: float = Field(
        default=30.0, ge=1.0, le=3600.0,
        description="how long a SIGTERMed burst may take to checkpoint before SIGKILL (s)",
    )
    eval_timeout_s: float = Field(
        default=900.0, ge=1.0, le=86_400.0,
        description="longest an evaluation child may run before it is killed (s)",
    )
    publish_verify_s: float = Field(
        default=10.0, ge=0.1, le=600.0,
        description="how long the inference service has to serve a published version (s)",
    )
    failure_backoff_s: float = Field(
        default=30.0, ge=0.0, le=3600.0,
        description="wait after a failed burst before the next; doubles per failure (s)",
    )
    failure_backoff_max_s: float = Field(
        default=900.0, ge=0.0, le=86_400.0,
        description="the longest wait after repeated failed bursts (s; at least failure_backoff_s)",
    )
    metrics_listen: str = Field(
        default="", max_length=200,
        description="serve Prometheus /metrics: '' off; 'unix' (<state dir>/metrics.sock), "
        "'unix:///abs/path.sock' (token-free, mode 0660) or 'HOST:PORT' (TCP, the "
        "[inference] token_file bearer token on every request; port 0: any free one)",
    )

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str) -> str:
        value = value.strip()
        if value in ("", "unix"):
            return value
        if value.startswith("unix://"):
            if not value.startswith("unix:///"):
                raise ValueError(f"{value!r}: a unix socket path must be absolute "
                                 "('unix:///run/mobizo/metrics.sock')")
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r} is not 'HOST:PORT', 'unix' or 'unix:///PATH' "
                             "(e.g. '127.0.0.1:9464')")
        return value

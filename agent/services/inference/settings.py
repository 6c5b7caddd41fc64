"""Settings of the inference service, and how ``agent.toml`` becomes them.

``mobizo-agent serve --config agent.toml`` reads the same file as the daemon: it listens where
``[service] inference_url`` says the daemon will look, and takes its threads, context, token
cap, queue, timings and store caps from ``[inference]``. Flags given on the command line
override single fields (:func:`serve_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from agent.config import AgentConfig
from agent.io.store import StoreConfig


class ServeConfig(BaseModel):
    """Settings of ``mobizo-agent serve``."""

    model_config = ConfigDict(extra="forbid")

    listen: str | None = Field(default="127.0.0.1:8780", description="HOST:PORT, or None")
    unix_socket: Path | None = Field(default=None, description="also listen on this socket")
    threads: int | None = Field(default=None, ge=1, le=256, description="runtime CPU threads")
    max_context: int | None = Field(default=None, ge=16, le=131_072,
                                    description="cap on prompt + generated tokens; "
                                    "default: the bundle's exported KV cache")
    max_queue: int = Field(default=16, ge=1, le=10_000, description="waiting requests; then 503")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger bodies get 413")
    max_prompt_chars: int = Field(default=200_000, ge=1, description="larger prompts get 413")
    default_max_tokens: int = Field(default=128, ge=1, description="when a request names none")
    request_timeout_s: float = Field(default=600, gt=0, description="wait for one generation")
    commit_ack_timeout_s: float = Field(
        default=2.0, ge=0, description="wait this long for the row to commit before answering")
    watch_interval_s: float = Field(default=0.25, gt=0, le=60,
                                    description="poll period of the active-adapter pointer")
    gil_switch_interval_s: float = Field(
        default=0.001, gt=0, le=0.1, description="Python thread switch interval in the service")
    adapters_kept: int = Field(default=5, ge=1, description="registry retention")
    post_switch_command: list[str] | None = Field(
        default=None, description="run after each adapter switch (env MOBIZO_ADAPTER_*)")
    post_switch_url: str | None = Field(
        default=None, description="POST {version, path, lora_name, lora_path} here after a switch")
    store: StoreConfig = Field(default_factory=StoreConfig)


def listen_address(inference_url: str) -> tuple[str | None, Path | None]:
    """Where to listen so the daemon reaches us at ``inference_url``: (HOST:PORT, socket)."""
    parts = urlsplit(inference_url)
    if parts.scheme == "unix":
        return None, Path(parts.path)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port or 80}", None


def serve_config(cfg: AgentConfig, **overrides: Any) -> ServeConfig:
    """The service's settings from the agent config, with ``overrides`` (non-None) on top.

    Args:
        cfg: the agent config (``[service]``, ``[inference]``, ``[adapters]``).
        overrides: ServeConfig fields from command-line flags; ``None`` values are ignored.
    """
    inf = cfg.inference
    listen, unix_socket = listen_address(cfg.service.inference_url)
    values: dict[str, Any] = {
        "listen": listen, "unix_socket": unix_socket, "threads": inf.threads or None,
        "max_context": inf.max_context, "max_queue": inf.max_queue,
        "default_max_tokens": inf.max_new_tokens, "request_timeout_s": inf.request_timeout_s,
        "watch_interval_s": inf.watch_interval_s,
        "store": StoreConfig(capture=inf.capture,
                             max_total_bytes=int(inf.store_max_mb * 1024 * 1024),
                             retention_days=inf.retention_days),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServeConfig(**values)

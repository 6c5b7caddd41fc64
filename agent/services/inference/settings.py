"""Settings of the inference service, and how ``agent.toml`` becomes them.

``mobizo-agent serve --config agent.toml`` reads the same file as the daemon: it listens where
``[service] inference_url`` says the daemon will look, and takes its threads, context, token
cap, queue, timings and store caps from ``[inference]``. Flags given on the command line
override single fields (:func:`serve_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.config import AgentConfig
from agent.io.store import StoreConfig
from agent.services.inference.guard import is_loopback


class ServeConfig(BaseModel):
    """Settings of ``mobizo-agent serve``."""

    model_config = ConfigDict(extra="forbid")

    listen: str | None = Field(default="127.0.0.1:8780", description="HOST:PORT, or None")
    unix_socket: Path | None = Field(default=None, description="also listen on this socket")
    threads: int | None = Field(default=None, ge=1, le=256, description="runtime CPU threads")
    engine: Literal["process", "inline"] = Field(
        default="process", description="run the program in an engine child process, or inline")
    max_context: int | None = Field(default=None, ge=16, le=131_072,
                                    description="cap on prompt + generated tokens; "
                                    "default: the bundle's exported KV cache")
    max_queue: int = Field(default=16, ge=1, le=10_000, description="waiting requests; then 503")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20,
                                description="larger bodies get 413 before they are read")
    max_prompt_chars: int = Field(default=200_000, ge=1, description="larger prompts get 413")
    default_max_tokens: int = Field(default=128, ge=1, description="when a request names none")
    prompt_cache_slots: int = Field(default=4, ge=0, le=64,
                                    description="conversations the prompt cache remembers")
    context_policy: Literal["truncate", "error"] = Field(
        default="truncate", description="a chat over the context: drop its oldest turns, or 400 "
        "when the prompt does not fit")
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
    # --- the local API's trust boundary (docs/security.md, "Local API") ---------------------
    require_token: bool = Field(
        default=True, description="TCP clients must send 'Authorization: Bearer <token>'; "
        "false is allowed on a loopback listen only (the unix socket never needs it)")
    token_file: Path | None = Field(
        default=None, description="the token (0600; made at first start if missing); "
        "default <state dir>/inference.token")
    allowed_hosts: list[str] = Field(
        default_factory=list, max_length=64,
        description="Host header names accepted besides loopback ones and the listen address")
    handler_threads: int = Field(default=16, ge=1, le=256,
                                 description="threads answering POSTs; more get 503 at once")
    max_connections: int = Field(
        default=128, ge=4, le=4096, description="connections waiting for their request; "
        "above it the one that waited longest is dropped")
    read_timeout_s: float = Field(default=10.0, gt=0, le=300,
                                  description="a request head, then its body, must arrive "
                                  "within this many seconds")
    write_timeout_s: float = Field(default=30.0, gt=0, le=600,
                                   description="longest wait for a client to take a write")
    max_stop_strings: int = Field(default=8, ge=0, le=64, description="stop strings per request")
    max_stop_chars: int = Field(default=256, ge=1, le=4096, description="length of one stop string")
    max_correction_chars: int = Field(default=32_768, ge=1, le=1 << 20,
                                      description="longer corrections get 413")
    corrections_per_minute: int = Field(default=60, ge=1, le=100_000,
                                        description="corrections accepted per minute; then 429")

    @model_validator(mode="after")
    def _token_off_the_loopback(self) -> ServeConfig:
        if not self.require_token and self.listen and not is_loopback(listen_host(self.listen)):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: the API needs its bearer "
                "token there (inference.require_token = true), or listen on 127.0.0.1 / a "
                "unix socket")
        return self


def listen_host(listen: str) -> str:
    """The host part of ``HOST:PORT`` (IPv6 without brackets; none given: 127.0.0.1)."""
    return listen.rpartition(":")[0].strip("[]") or "127.0.0.1"


def listen_address(inference_url: str) -> tuple[str | None, Path | None]:
    """Where to listen so the daemon reaches us at ``inference_url``: (HOST:PORT, socket)."""
    parts = urlsplit(inference_url)
    if parts.scheme == "unix":
        return None, Path(parts.path)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port or 80}", None


def serve_config(cfg: AgentConfig, *, listen: str | None = None,
                 unix_socket: Path | None = None, **overrides: Any) -> ServeConfig:
    """The service's settings from the agent config, with ``overrides`` (non-None) on top.

    Args:
        cfg: the agent config (``[service]``, ``[inference]``, ``[adapters]``).
        listen: HOST:PORT instead of ``inference_url``'s ('' for no TCP listener).
        unix_socket: a unix socket to listen on as well.
        overrides: ServeConfig fields from command-line flags; ``None`` values are ignored.

    Raises:
        pydantic.ValidationError: e.g. a listen address off loopback with the token off.
    """
    inf = cfg.inference
    url_listen, url_socket = listen_address(cfg.service.inference_url)
    values: dict[str, Any] = {
        "listen": url_listen, "unix_socket": url_socket, "threads": inf.threads or None,
        "engine": inf.engine,
        "max_context": inf.max_context, "max_queue": inf.max_queue,
        "default_max_tokens": inf.max_new_tokens, "prompt_cache_slots": inf.prompt_cache_slots,
        "context_policy": inf.context_policy, "request_timeout_s": inf.request_timeout_s,
        "watch_interval_s": inf.watch_interval_s,
        "max_body_bytes": inf.max_body_bytes, "require_token": inf.require_token,
        "token_file": inf.token_file, "allowed_hosts": list(inf.allowed_hosts),
        "handler_threads": inf.handler_threads, "max_connections": inf.max_connections,
        "read_timeout_s": inf.read_timeout_s, "write_timeout_s": inf.write_timeout_s,
        "max_stop_strings": inf.max_stop_strings, "max_stop_chars": inf.max_stop_chars,
        "max_correction_chars": inf.max_correction_chars,
        "corrections_per_minute": inf.corrections_per_minute,
        "store": StoreConfig(capture=inf.capture,
                             max_total_bytes=int(inf.store_max_mb * 1024 * 1024),
                             retention_days=inf.retention_days),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if listen is not None:
        values["listen"] = listen or None
    if unix_socket is not None:
        values["unix_socket"] = unix_socket
    return ServeConfig(**values)

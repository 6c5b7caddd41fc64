"""[service] and [inference] sections: the model bundle and the local inference service."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.config.base import Section

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8780"

# mobizo-export --quantize schemes (agent.core.bundle.QuantScheme), plus "any": no expectation.
ExpectedScheme = Literal["any", "none", "8da8w", "8da4w"]
EXPECTED_SCHEMES = get_args(ExpectedScheme)


class ServiceConfig(Section):
    """The bundle the agent trains for and how it reaches the inference service."""

    bundle_dir: Path | None = Field(
        default=None, strict=False,
        description="model bundle directory (manifest.json, train.pte, ...); "
        "default <paths.state_dir>/bundle",
    )
    inference_url: str = Field(
        default=DEFAULT_INFERENCE_URL,
        description="inference service: 'http://HOST:PORT' or 'unix:///run/PATH.sock'",
    )
    request_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="timeout of one request to the service"
    )
    quantize: ExpectedScheme = Field(
        default="any",
        description="base quantization the bundle should be exported with (mobizo-export "
        "--quantize), chosen by the board profile from its memory; 'any' = no expectation. "
        "A bundle of another scheme still works: config check and the daemon warn",
    )

    @field_validator("inference_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError("an http URL needs a host, e.g. 'http://127.0.0.1:8780'")
        elif parts.scheme == "unix":
            if not parts.path.startswith("/"):
                raise ValueError("a unix socket URL needs an absolute path: 'unix:///run/x.sock'")
        else:
            raise ValueError("use http://HOST:PORT, https://HOST:PORT or unix:///PATH")
        return value


class InferenceConfig(Section):
    """Settings of the local inference service that a board profile chooses."""

    threads: int = Field(default=0, ge=0, le=256, description="CPU threads; 0 = all cores")
    max_context: int = Field(
        default=512, ge=16, le=131_072, description="prompt + generated tokens (KV cache)"
    )
    max_new_tokens: int = Field(
        default=128, ge=1, le=32_768, description="default cap on generated tokens per request"
    )
    memory_max_mb: int = Field(
        default=0, ge=0, le=1 << 20, description="memory cap of the service (MiB); 0 = none"
    )
    max_queue: int = Field(
        default=16, ge=1, le=10_000, description="requests waiting for generation; more get 503"
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, le=24 * 3600, description="longest wait for one generation"
    )
    watch_interval_s: float = Field(
        default=0.25, gt=0, le=60, description="poll period of the active-adapter pointer"
    )
    capture: bool = Field(default=True, description="record served interactions in the store")
    store_max_mb: float = Field(
        default=256.0, gt=0, le=1 << 20, description="interaction store size cap (MiB)"
    )
    retention_days: float = Field(
        default=90.0, gt=0, le=36_500, description="stored interactions older than this go"
    )

"""[service] and [inference] sections: the model bundle and the local inference service."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.config.base import Section

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8780"
TOKEN_FILE_NAME = "inference.token"  # in the state dir unless [inference] token_file says

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
    release_program_during_bursts: bool = Field(
        default=True,
        description="ask the inference service to release its loaded program while a "
        "training burst runs, so the board holds one copy of the weights; the first request "
        "during or after a burst loads it again (docs/architecture.md, 'Memory on the board')",
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
    prompt_cache_slots: int = Field(
        default=4, ge=0, le=64, description="conversations whose token ids the prompt cache "
        "remembers (the newest one's KV state is reused by a follow-up turn); 0 = off"
    )
    context_policy: Literal["truncate", "error"] = Field(
        default="truncate", description="a chat whose prompt + max_tokens exceed the context: "
        "'truncate' drops its oldest whole turns (system messages stay; usage.truncated_messages "
        "says how many), 'error' answers 400 once the prompt itself does not fit"
    )
    engine: Literal["process", "inline"] = Field(
        default="process", description="where the ExecuTorch program runs: 'process', an "
        "engine child of the service (its HTTP and control threads never wait for a forward; "
        "released during bursts, the child exits and the service holds no torch), or "
        "'inline', in the service process itself (docs/architecture.md, 'Memory on the board')"
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
    # --- the local API's trust boundary (docs/security.md, "Local API") ---------------------
    require_token: bool = Field(
        default=True, description="TCP clients must send 'Authorization: Bearer <token>'; "
        "false is allowed on a loopback address only (the unix socket never needs it)"
    )
    token_file: Path | None = Field(
        default=None, strict=False,
        description="the API token (mode 0600; install writes it, the service makes it at "
        f"first start if missing); default <paths.state_dir>/{TOKEN_FILE_NAME}",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, max_length=64,
        description="Host header names accepted besides loopback ones and the listen address",
    )
    handler_threads: int = Field(
        default=16, ge=1, le=256, description="threads answering POSTs; more get 503 at once"
    )
    max_connections: int = Field(
        default=128, ge=4, le=4096, description="connections waiting for their request; "
        "above it the one that waited longest is dropped",
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="a request, then its body, must arrive this soon"
    )
    write_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="longest wait for a client to take a write"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=64 << 20, description="larger request bodies get 413"
    )
    max_stop_strings: int = Field(default=8, ge=0, le=64, description="stop strings per request")
    max_stop_chars: int = Field(
        default=256, ge=1, le=4096, description="characters of one stop string"
    )
    max_correction_chars: int = Field(
        default=32_768, ge=1, le=1 << 20, description="longer corrections get 413"
    )
    corrections_per_minute: int = Field(
        default=60, ge=1, le=100_000, description="corrections accepted per minute; then 429"
    )

    def token_path(self, state_dir: Path) -> Path:
        """Where the API token is: ``token_file``, or its default in ``state_dir``."""
        return self.token_file if self.token_file is not None else state_dir / TOKEN_FILE_NAME

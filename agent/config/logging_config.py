"""[logging] section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.config.base import Section

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class LoggingConfig(Section):
    """Log level and destination."""

    level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    journal: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="log to the systemd journal with structured fields: 'auto' = when "
        "started by systemd (JOURNAL_STREAM set), 'on', or 'off' (stderr)",
    )

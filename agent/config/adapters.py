"""[adapters] section: the adapter registry and the eval gate in front of it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.config.base import Section
from agent.config.problems import Problems


class AdaptersConfig(Section):
    """Registry location, retention, and how much better a candidate must be to publish."""

    registry_dir: Path | None = Field(
        default=None, strict=False,
        description="adapter registry directory; default <paths.state_dir>/adapters",
    )
    versions_kept: int = Field(
        default=5, ge=1, le=1000,
        description="published versions kept for rollback (the active one always stays)",
    )
    eval_margin: float = Field(
        default=0.01, ge=0,
        description="candidate must beat the active adapter's held-out loss by this much",
    )
    eval_margin_mode: Literal["relative", "absolute"] = Field(
        default="relative",
        description="'relative': loss_new <= loss_active * (1 - margin); "
        "'absolute': loss_new <= loss_active - margin",
    )
    eval_max_examples: int = Field(
        default=64, ge=1, le=100_000, description="most held-out examples per evaluation"
    )

    @model_validator(mode="after")
    def _margin(self) -> AdaptersConfig:
        if self.eval_margin_mode == "relative" and self.eval_margin >= 1:
            raise Problems([(
                "eval_margin",
                "is a share in relative mode and must be < 1 (0.01 = 1% better)",
                self.eval_margin,
            )])
        return self

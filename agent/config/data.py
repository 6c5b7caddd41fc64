"""[data] section: the interaction store and how training examples are drawn from it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.config.base import Section


class DataConfig(Section):
    """Where interactions live and how they are split into train and held-out sets.

    The "enough new examples" gate of the scheduler is ``constraints.min_new_examples``.
    """

    store_path: Path | None = Field(
        default=None, strict=False,
        description="SQLite interaction store; default <paths.state_dir>/interactions.sqlite3",
    )
    heldout_share: float = Field(
        default=0.2, gt=0, lt=1,
        description="share of examples held out for the eval gate (stable by example id)",
    )
    max_examples: int = Field(
        default=10_000, ge=1, le=10_000_000,
        description="most examples used for training (newest first)",
    )
    min_heldout_examples: int = Field(
        default=4, ge=1, le=100_000,
        description="the eval gate needs at least this many held-out examples",
    )

"""The base of every config section: strict, self-documenting pydantic models.

Frigate style (``frigate/config/base.py``): unknown keys are errors, every field carries a
default, bounds and a description, so the schema documents itself and a typo in the TOML file
is reported instead of silently ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: forbids unknown keys, no silent type coercion, immutable once built.

    ``strict=True`` stops pydantic from turning ``"5"`` into ``5`` or ``"yes"`` into ``True``:
    TOML has real types, and a quoted number in a config file is almost always a mistake.
    Path fields opt back into lax mode because TOML has no path type.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

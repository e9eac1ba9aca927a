"""The base of every recipe section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSection(BaseModel):
    """Base of every recipe section: unknown keys are refused, so a misspelt key is an error rather than a
    silently ignored setting, and assignments are validated like parsing."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


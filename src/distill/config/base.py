"""The base of every recipe section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSection(BaseModel):
    """Base of every recipe section: unknown keys are refused, so a misspelt key is an error rather than a
    silently ignored setting; assignments are validated like parsing; and every float field is finite (``inf``
    epochs would never end, a ``nan`` learning rate trains nothing), also for ``lr: nan`` given as text."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

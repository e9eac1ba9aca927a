"""The base of every recipe section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictSection(BaseModel):
    """Base of every recipe section: unknown keys are refused, so a misspelt key is an error rather than a
    silently ignored setting; assignments are validated like parsing; and every float field is finite (``inf``
    epochs would never end, a ``nan`` learning rate trains nothing), also for ``lr: nan`` given as text."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def differences(old: Any, new: Any, prefix: str = "", ignore: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The dotted paths at which two dumped configs (nested dicts) differ; top-level keys in ``ignore`` are
    skipped."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [found for key in sorted(set(old) | set(new)) if not (key in ignore and not prefix)
                for found in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "(all)"]

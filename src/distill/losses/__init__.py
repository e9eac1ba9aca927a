"""Loss functions by name.

A recipe term names a loss; each loss registers itself where it is defined, with ``@register_loss(name, ...)``
(see :mod:`distill.losses.registry` for what the signature says and what the flags add). Registering a function
is all a new method needs; the objective and trainer do not change. Importing this package imports every loss
module, so the registry is complete once ``distill.losses`` is imported.
"""

from __future__ import annotations

from distill.losses import features, lm, logits, peers, relations  # noqa: F401  (importing them registers their losses)
from distill.losses.registry import LOSSES, ROLES, LossInfo, get_loss, register_loss

__all__ = ["LOSSES", "ROLES", "LossInfo", "get_loss", "register_loss"]

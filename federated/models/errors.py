"""Errors raised while building models or moving weights in and out of them.

Hierarchy::

    ValueError
    └── ModelError         unknown model spec, factory that cannot be imported or called,
                           weights whose names or shapes do not match the model

Messages name the offending spec or tensor and, for specs, the allowed values.
"""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(ValueError):
    """A model spec, factory or set of weights does not fit."""

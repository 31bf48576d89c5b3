"""Checks of single values, shared by every section: each raises :class:`ConfigError` naming the field and
the values it allows."""

from __future__ import annotations

import math
from typing import Any

from federated.config.errors import ConfigError

__all__ = ["finite_number", "number", "positive_int"]


def positive_int(name: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is an int >= 1 (bools are not ints here)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, not an int too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (YAML allows any number of digits)
        return False


def number(name: str, value: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number in ``[lo, hi]`` (``(lo, hi]`` if ``open_lo``)."""
    ok = finite_number(value)
    if not ok or value > hi or value < lo or (open_lo and value == lo):
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise ConfigError(name, f"must be a number in {bound}, got {value!r}")

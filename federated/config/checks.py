"""Checks of single values, shared by every section: each raises :class:`ConfigError` naming the field and
the values it allows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from federated.config.errors import ConfigError

__all__ = ["Bound", "finite_number", "number", "positive_int"]

#: Characters of a refused value's repr that a message shows.
_SHOWN = 60


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


def number(name: str, value: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False,
           open_hi: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number from ``lo`` to ``hi`` (each end included
    unless ``open_lo``/``open_hi``)."""
    Bound(float, lo, hi, open_lo=open_lo, open_hi=open_hi).check(name, value)


@dataclass(frozen=True)
class Bound:
    """The values one setting may take: an integer (``kind`` int) or a finite number (``kind`` float,
    ints accepted) from ``lo`` to ``hi``, each end included unless ``open_lo``/``open_hi``; or one of the
    strings ``choices`` (``kind`` str). ``note`` joins the message (what a special value means).
    """

    kind: type
    lo: float = 0.0
    hi: float = math.inf
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is allowed (bools are neither integers nor numbers here)."""
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if self.kind is int and not isinstance(value, int):
            return False
        if not finite_number(value):
            return False
        above = self.lo < value if self.open_lo else self.lo <= value
        below = value < self.hi if self.open_hi else value <= self.hi
        return bool(above and below)

    def describe(self) -> str:
        """The allowed values in words: ``an integer in [1, 1000]``, ``a number in (0.0, 10.0]``,
        ``one of sgd, adam``."""
        if self.kind is str:
            return f"one of {', '.join(self.choices)}"
        if self.kind is int:
            return f"an integer >= {int(self.lo)}" if math.isinf(self.hi) else \
                f"an integer in [{int(self.lo)}, {int(self.hi)}]"
        return f"a number in {'(' if self.open_lo else '['}{self.lo}, {self.hi}{')' if self.open_hi else ']'}"

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming ``name`` and the allowed values unless :meth:`admits` ``value``."""
        if self.admits(value):
            return
        note = f" ({self.note})" if self.note else ""
        # A TASK's values come from the network: show a bounded prefix of what arrived, not all of it.
        shown = repr(value)
        shown = shown if len(shown) <= _SHOWN else f"{shown[:_SHOWN]}..."
        if self.kind is str:
            raise ConfigError(name, f"{shown} is not {self.describe()}{note}")
        raise ConfigError(name, f"must be {self.describe()}{note}, got {shown}")

"""Errors raised while loading or partitioning data.

Hierarchy::

    ValueError
    └── DataError          bad dataset spec, unreadable or malformed file, impossible partition

A ``DataError`` message always names the offending input (the spec string or the file path) and what is
wrong with it, because it is usually shown to a user who pointed ``--dataset`` or ``--data-path`` at the
wrong thing.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset spec, data file or partition request is invalid."""

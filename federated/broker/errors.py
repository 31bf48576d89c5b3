"""Errors raised by the broker.

The tree (built-in bases in brackets, so callers can catch what they already know)::

    BrokerError
     ├── BindError [OSError]             the broker cannot listen on its address (in use, not local)
     └── StoreError                      the round store cannot do what was asked
          ├── StoreInUseError            another broker is running on this store
          ├── StoreNotFoundError         [FileNotFoundError] no store file (read-only open)
          ├── SchemaVersionError         the store was written by a newer version of this code
          ├── ReadOnlyStoreError         a write was attempted on a store opened read-only
          ├── DuplicateRoundError        [ValueError] the round number is already recorded
          └── NotInStoreError            [KeyError] the store holds no such thing
               ├── RoundNotFoundError    no such round, or no checkpoint for it
               └── WorkerNotFoundError   no such worker

Misuse of an API (a wrong argument type or value) raises ``TypeError`` / ``ValueError`` as usual.
"""

from __future__ import annotations

__all__ = [
    "BindError",
    "BrokerError",
    "DuplicateRoundError",
    "NotInStoreError",
    "ReadOnlyStoreError",
    "RoundNotFoundError",
    "SchemaVersionError",
    "StoreError",
    "StoreInUseError",
    "StoreNotFoundError",
    "WorkerNotFoundError",
]


class BrokerError(Exception):
    """Base class of every error the broker raises on purpose."""


class StoreError(BrokerError):
    """The round store (SQLite database and checkpoints) cannot do what was asked."""


class StoreInUseError(StoreError):
    """Another broker process holds this store (its lock file); two brokers on one store would both
    record rounds."""


class BindError(BrokerError, OSError):
    """The broker cannot listen on its ``--bind`` address (already in use, or not an address of this
    host)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """There is no store file at the given path (only raised when opening read-only)."""


class SchemaVersionError(StoreError):
    """The store's schema is newer than this code understands; upgrade `federated` to read it."""


class ReadOnlyStoreError(StoreError):
    """A write was attempted on a store opened with ``readonly=True``."""


class DuplicateRoundError(StoreError, ValueError):
    """The round number has already been recorded; a round is written exactly once."""


class NotInStoreError(StoreError, KeyError):
    """The store holds no such record; a ``KeyError`` so that mapping-style callers can catch it."""

    def __str__(self) -> str:
        # KeyError's __str__ repr()s its argument; ours is a sentence meant for people.
        return str(self.args[0]) if self.args else ""


class RoundNotFoundError(NotInStoreError):
    """The store holds no such round, or no checkpoint for it."""


class WorkerNotFoundError(NotInStoreError):
    """The store holds no such worker."""

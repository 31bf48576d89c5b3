"""The broker: round loop, worker registry, selection and the round store."""

from __future__ import annotations

from federated.broker.store import RoundRecord, RoundStore

__all__ = ["RoundRecord", "RoundStore"]

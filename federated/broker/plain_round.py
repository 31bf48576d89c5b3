"""A plain round's collector: one UPDATE from each selected worker, until all answered or the deadline.

An accepted update goes straight into its row of a float32 matrix (one row per cohort member, in sorted
order), decompressed first if the run compresses updates: from then on the round holds flat vectors
only, and the aggregation works on them without another copy (:mod:`federated.broker.aggregate`). The
UPDATE message is kept without its tensors, for its sample count and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from federated.aggregation import check_compatible
from federated.aggregation.vectors import flatten_into
from federated.broker.admission import Refusal
from federated.broker.collector import Collected, too_few
from federated.broker.planning import STAGE_TRAIN, RoundPlan, fewest_to_start
from federated.compression import Codec, Compressed
from federated.config import FederatedConfig
from federated.protocol import ErrorCode, Update

__all__ = ["PlainRound"]

log = logging.getLogger("federated.broker")


class PlainRound:
    """Collects the UPDATEs of ``plan``'s cohort, from ``now`` until the plan's timeout has passed.

    ``config``: the run's settings (``min_clients``: the fewest survivors a round may aggregate);
    ``rows``: a float32 matrix of (cohort size, parameters) to write the updates into (the caller may
    reuse it round after round); ``reference``: the global model (names, shapes); ``codec``: the run's
    compression (None: updates travel as float32 tensors).
    """

    def __init__(self, plan: RoundPlan, config: FederatedConfig, rows: np.ndarray, now: float, *,
                 reference: Mapping[str, np.ndarray], codec: Codec | None) -> None:
        self.plan = plan
        self.rows = rows
        self.reference = reference
        self.codec = codec
        # DP-FedAvg with Poisson sampling releases every round it started, however few answered (the noise
        # does not depend on their number; a failed round would reveal it): see planning.fewest_to_start.
        self.min_clients = config.min_clients if fewest_to_start(config) else 0
        self._deadline = now + plan.timeout_s
        self._row_of = {w: i for i, w in enumerate(sorted(plan.cohort))}
        self._pending = set(plan.cohort)
        self.updates: dict[str, Update] = {}
        self._dropped: dict[str, str] = {}

    @property
    def deadline(self) -> float:
        return self._deadline

    @property
    def pending(self) -> set[str]:
        return self._pending

    @property
    def dropped(self) -> dict[str, str]:
        return self._dropped

    @property
    def finished(self) -> bool:
        return not self._pending

    def receive(self, worker_id: str, msg: Any) -> Refusal | None:
        rid = self.plan.round_id
        if not isinstance(msg, Update):
            return Refusal(ErrorCode.WRONG_STAGE, f"{type(msg).__name__} for round {msg.round_id}; "
                                                  f"current secure round is {rid}")
        if msg.round_id != rid or msg.stage != STAGE_TRAIN:
            return Refusal(ErrorCode.WRONG_STAGE, f"update for round {msg.round_id}/{msg.stage}; "
                                                  f"current round is {rid}/{STAGE_TRAIN}")
        if worker_id not in self._pending:
            return Refusal(ErrorCode.WRONG_STAGE, f"no update expected from {worker_id} in round {rid}")
        row = self.rows[self._row_of[worker_id]]
        if self.plan.evaluate_only:
            if msg.update:  # an evaluation-only round: scores, no update
                return Refusal(ErrorCode.BAD_TENSOR, "an evaluation-only round takes no update tensors")
            row[:] = 0.0
        elif self.codec is not None:
            try:
                row[:] = self._decompress(msg)
            except (ValueError, TypeError) as exc:
                return Refusal(ErrorCode.BAD_TENSOR, f"compressed update: {exc}")
        else:
            try:
                check_compatible(self.reference, msg.update)
            except ValueError as exc:
                return Refusal(ErrorCode.BAD_TENSOR, str(exc))
            if any(t.dtype != np.float32 for t in msg.update.values()):
                return Refusal(ErrorCode.BAD_TENSOR, "update tensors must be float32")
            flatten_into(msg.update, row)
        self.updates[worker_id] = replace(msg, update={})  # the tensors live in the row now
        self._pending.discard(worker_id)
        return None

    def _decompress(self, msg: Update) -> np.ndarray:
        """Undo the worker's codec. Raises ValueError/TypeError for a payload that does not decode."""
        assert self.codec is not None
        meta = msg.compression.get("meta")
        if not isinstance(meta, dict):
            raise TypeError("missing compression metadata")
        if "round_seed" in meta and meta["round_seed"] != self.plan.compression_seed:
            raise ValueError("shared random-k indices for another round")
        length = self.rows.shape[1]
        packed = Compressed(dict(msg.update), dict(meta), sum(int(t.nbytes) for t in msg.update.values()))
        vector = self.codec.decode(packed, length)
        if vector.shape != (length,):
            raise ValueError(f"vector has shape {vector.shape}; the model has {length} parameters")
        return vector

    def drop(self, worker_id: str, reason: str) -> None:
        if worker_id in self._pending:
            self._pending.discard(worker_id)
            self._dropped[worker_id] = reason
            # Dropouts are routine in federated learning: INFO. Their causes are logged where seen.
            log.info("round %d: worker %s dropped (%s)", self.plan.round_id, worker_id, reason)

    def progress(self, now: float) -> list[tuple[str, Any]]:
        """At the deadline, whoever has not answered is dropped. A plain round sends nothing more."""
        if now >= self._deadline:
            for wid in sorted(self._pending):
                self.drop(wid, "deadline")
        return []

    def result(self) -> Collected:
        """The survivors and their rows (moved up to the top of the matrix, in order)."""
        survivors = sorted(self.updates)
        for i, wid in enumerate(survivors):
            source = self._row_of[wid]
            if source != i:  # rows only ever move up, so none is overwritten before it is read
                self.rows[i] = self.rows[source]
        updates = {w: self.updates[w] for w in survivors}
        failure = too_few(survivors, self.plan.cohort, self.min_clients)
        return Collected(survivors, dict(self._dropped), failure=failure, updates=updates,
                         rows=self.rows[:len(survivors)])

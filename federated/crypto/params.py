"""Parameters of one secure-aggregation round, agreed through the TASK and bound into the session id."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from federated.crypto.errors import ParameterError
from federated.crypto.fixedpoint import check_no_wrap

__all__ = ["SecAggParams", "advertise_message", "b_commitment", "consistency_message", "session_id", "sign_of"]


@dataclass(frozen=True)
class SecAggParams:
    """One round's secure-aggregation settings.

    ``threshold``: shares needed to rebuild a secret (a broker colluding with fewer than this many of a
    worker's neighbours learns nothing); ``degree``: neighbours per worker in the SecAgg+ graph (n - 1 or
    more means the complete graph of the original protocol); ``clip``: L2 bound of an update;
    ``weight_cap``: a worker's sample weight is ``min(num_samples, weight_cap)``; ``frac_bits``: fixed-point
    scale 2^frac_bits; ``n_max``: the most inputs that can be summed (the cohort size);
    ``vector_length``: coordinates of an encoded input (model parameters, then the metrics and weight of
    :mod:`federated.crypto.secagg_input`);
    ``ring_bits``: the sum lives in Z_2^ring_bits, 32 or 16 (masked inputs then travel as uint16: the
    low halves of the 32-bit masked words, see :mod:`federated.crypto.fixedpoint`).
    """

    threshold: int
    degree: int
    clip: float
    weight_cap: int
    frac_bits: int
    n_max: int
    vector_length: int
    ring_bits: int = 32

    def validate(self) -> None:
        """Raise :class:`ParameterError` naming the first bad value (this arrives over the network)."""
        for name in ("threshold", "degree", "weight_cap", "frac_bits", "n_max", "vector_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "frac_bits" else 1):
                raise ParameterError(f"secagg.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.clip, (int, float)) or isinstance(self.clip, bool) or not (
                math.isfinite(self.clip) and self.clip > 0):
            raise ParameterError(f"secagg.clip must be a positive number, got {self.clip!r}")
        if self.threshold > self.degree:
            raise ParameterError(f"secagg.threshold ({self.threshold}) cannot exceed secagg.degree ({self.degree})")
        if self.vector_length > 1 << 28:
            raise ParameterError(f"secagg.vector_length {self.vector_length} is too large")
        # check_no_wrap also refuses a ring width other than 32 or 16.
        check_no_wrap(self.n_max, float(self.clip), self.weight_cap, self.frac_bits, self.ring_bits)

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        """The dtype a masked input travels in: uint32, or uint16 for 16-bit sums."""
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecAggParams:
        """Parse and validate parameters from a TASK; ParameterError for missing, unknown or bad values."""
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) != names:
            raise ParameterError(f"secagg parameters must have exactly the keys {sorted(names)}")
        params = cls(**{k: data[k] for k in names})
        params.validate()
        return params

    def canonical(self) -> bytes:
        """Deterministic bytes of these parameters (for the session id)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes, so concatenations cannot be ambiguous."""
    return struct.pack(">I", len(data)) + data


def b_commitment(round_id: int, worker_id: str, b: bytes) -> bytes:
    """SHA-256 commitment to a worker's self-mask seed ``b`` (32 bytes), signed in its advertisement.

    ``b`` is 32 uniformly random bytes, so the digest reveals nothing about it; binding: a rebuilt seed
    that does not hash to the commitment proves a tampered share (the broker then refuses the sum)."""
    return hashlib.sha256(b"fl-secagg-b-commit-v1" + struct.pack(">Q", round_id) + _lp(worker_id.encode())
                          + _lp(b)).digest()


def advertise_message(round_id: int, worker_id: str, c_pk: bytes, s_pk: bytes, b_commit: bytes) -> bytes:
    """What a worker signs when it advertises its round keys (binds keys and the commitment to its
    self-mask seed to the round and the id)."""
    return (b"fl-secagg-advertise-v2" + struct.pack(">Q", round_id) + _lp(worker_id.encode()) + _lp(c_pk)
            + _lp(s_pk) + _lp(b_commit))


def session_id(round_id: int, params: SecAggParams, ids: Sequence[str], c_pk: Sequence[bytes],
               s_pk: Sequence[bytes], identity: Sequence[bytes], b_commit: Sequence[bytes]) -> bytes:
    """SHA-256 over the round, the parameters and every roster entry, in roster order (32 bytes).

    Every worker recomputes it from the roster it verified, so a broker that shows different rosters to
    different workers gives them different sessions, and their masks and shares no longer fit together.
    """
    h = hashlib.sha256(b"fl-secagg-session-v2" + struct.pack(">Q", round_id) + _lp(params.canonical()))
    for wid, c, s, ident, commit in zip(ids, c_pk, s_pk, identity, b_commit, strict=True):
        h.update(_lp(wid.encode()) + _lp(c) + _lp(s) + _lp(ident) + _lp(commit))
    return h.digest()


def consistency_message(session: bytes, survivors: Sequence[str]) -> bytes:
    """What a survivor signs in the consistency stage: the session and the survivor set it was told."""
    body = b"".join(_lp(w.encode()) for w in survivors)
    return b"fl-secagg-consistency-v1" + _lp(session) + struct.pack(">I", len(survivors)) + body


def sign_of(u: str, v: str) -> int:
    """+1 if ``u`` adds the pairwise mask it shares with ``v``, -1 if it subtracts it (ids compared)."""
    return 1 if u < v else -1

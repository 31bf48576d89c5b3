"""Sparsification: send k = round(fraction * d) of an update's d coordinates.

- :class:`TopK` keeps the k largest ``|x + residual|`` and carries what it did not send to the next
  round (error feedback), so nothing is lost, only delayed. Sends int32 indices and the values.
- :class:`RandomK` keeps k coordinates chosen by :func:`shared_indices` from the round seed, the same
  on every worker in a round, so it sends only the values and masked sums still line up. With
  ``error_feedback`` (spec ``"randk:F+ef"``) it too carries the unsent coordinates to later rounds
  (Stich et al. 2018, "Sparsified SGD with Memory"); the residual is the worker's own, so this works
  under secure aggregation as well.

Either may quantize the kept values with a :class:`~federated.compression.quantize.Quantizer` (specs
``"topk:F+q8"``, ``"randk:F+q8"``); top-k's residual then also absorbs the quantization error.
"""

from __future__ import annotations

import math

import numpy as np

from federated.compression.codec import (
    SCALAR_BYTES,
    Compressed,
    check_round_seed,
    check_vector,
    expect_meta,
    expect_tensor,
)
from federated.compression.quantize import Quantizer

__all__ = ["RandomK", "TopK", "check_fraction", "kept_count", "shared_indices"]


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float if it is in (0, 1]; else ``ValueError``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not math.isfinite(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def kept_count(length: int, fraction: float) -> int:
    """How many of ``length`` coordinates a sparsifier at ``fraction`` keeps: ``fraction * length``
    rounded to the nearest int, at least 1 (0 for an empty vector), at most ``length``. Raises
    ``ValueError`` for a fraction outside (0, 1] or a negative length."""
    check_fraction(fraction)
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    if length == 0:
        return 0
    # Round half up rather than ceil: 0.1 * 20 is 2.0000000000000004 in floats and must keep 2.
    return min(length, max(1, math.floor(fraction * length + 0.5)))


def shared_indices(length: int, fraction: float, round_seed: int) -> np.ndarray:
    """The coordinates random-k keeps this round: the first :func:`kept_count` entries of
    ``np.random.default_rng(round_seed).permutation(length)``, sorted ascending, as int32.

    Every worker (and the broker) computes the same indices for the same round seed; a new round seed
    gives new ones, so every coordinate is eventually sent. Not cryptographic: anyone who knows the seed
    knows the indices, which is fine because they are not secret. Raises ``ValueError`` for a bad
    length, fraction or seed.
    """
    k = kept_count(length, fraction)
    perm = np.random.default_rng(check_round_seed(round_seed)).permutation(length)
    # Sorted so gathers and scatters walk memory in order; the set is what the seed fixes.
    return np.sort(perm[:k]).astype(np.int32)


def _spec(kind: str, fraction: float, quantizer: Quantizer | None, ef: bool = False) -> str:
    return f"{kind}:{fraction!r}" + ("+ef" if ef else "") + (f"+{quantizer.name}" if quantizer is not None else "")


def _encode_values(values: np.ndarray, quantizer: Quantizer | None, round_seed: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, float | int | str], np.ndarray]:
    """Tensors and meta for the kept values, and the values the receiver will decode."""
    if quantizer is None:
        return {"values": values}, {}, values
    codes, scale = quantizer.quantize(values, round_seed)
    return {"codes": codes}, {"scale": scale}, quantizer.dequantize(codes, scale, values.size)


def _decode_values(c: Compressed, quantizer: Quantizer | None, k: int) -> np.ndarray:
    if quantizer is None:
        return expect_tensor(c.tensors, "values", np.float32, k)
    return quantizer.dequantize(c.tensors.get("codes"), c.meta.get("scale"), k)


def _payload_bytes(tensors: dict[str, np.ndarray], meta: dict[str, float | int | str]) -> int:
    return sum(int(t.nbytes) for t in tensors.values()) + (SCALAR_BYTES if "scale" in meta else 0)


class TopK:
    """Top-k sparsification with error feedback (spec ``"topk:F"``, or ``"topk:F+qK"`` with
    ``quantizer``).

    Each encode adds the residual to the update, sends the k largest-magnitude coordinates (int32
    indices, ascending, and their values) and keeps ``x + residual - sent`` as the next residual. Over
    rounds the sum of what was sent tracks the sum of the inputs to within the current residual.

    ``secure_compatible`` is False: each worker keeps different coordinates, so under secure
    aggregation the masked vectors no longer line up coordinate by coordinate and their sum means
    nothing. State: one instance per worker; :meth:`reset` drops the residual (e.g. after the model
    changes shape). Raises ``ValueError`` for a fraction outside (0, 1].
    """

    secure_compatible = False

    def __init__(self, fraction: float, quantizer: Quantizer | None = None) -> None:
        self.fraction = check_fraction(fraction)
        self.quantizer = quantizer
        self.name = _spec("topk", self.fraction, quantizer)
        self.residual: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the error-feedback residual."""
        self.residual = None

    def encode(self, vector: np.ndarray, *, round_seed: int) -> Compressed:
        """Compress ``vector + residual`` and update the residual. Raises ``ValueError`` for a bad
        vector or seed, or a vector whose length differs from the residual's (call :meth:`reset`)."""
        x = check_vector(vector)
        round_seed = check_round_seed(round_seed)
        if self.residual is not None and self.residual.size != x.size:
            raise ValueError(f"update has {x.size} coordinates but the residual has {self.residual.size}")
        acc = x + self.residual if self.residual is not None else x.copy()
        d, k = acc.size, kept_count(acc.size, self.fraction)
        if k == d:
            idx = np.arange(d, dtype=np.int32)
        else:
            idx = np.sort(np.argpartition(np.abs(acc), d - k)[d - k:]).astype(np.int32)
        tensors, meta, sent = _encode_values(acc[idx], self.quantizer, round_seed)
        acc[idx] -= sent
        self.residual = acc
        tensors = {"indices": idx, **tensors}
        meta = {"codec": self.name, "length": d, **meta}
        return Compressed(tensors, meta, _payload_bytes(tensors, meta))

    def decode(self, c: Compressed, length: int) -> np.ndarray:
        """Scatter the sent values into zeros of ``length``. Raises ``ValueError`` unless ``c`` has
        exactly :func:`kept_count` strictly increasing in-range indices and valid values."""
        expect_meta(c, self.name, length)
        k = kept_count(length, self.fraction)
        idx = expect_tensor(c.tensors, "indices", np.int32, k)
        # Strictly increasing and in range: a negative index would wrap around and a repeated one
        # would let a worker send more than its k coordinates' worth.
        if k and (idx[0] < 0 or idx[-1] >= length or (k > 1 and not (np.diff(idx) > 0).all())):
            raise ValueError("indices must be strictly increasing and within [0, length)")
        out = np.zeros(length, dtype=np.float32)
        out[idx] = _decode_values(c, self.quantizer, k)
        return out


class RandomK:
    """Shared-seed random-k sparsification (spec ``"randk:F"``, or ``"randk:F+qK"`` with
    ``quantizer``): sends only the values at :func:`shared_indices` for the round seed, which ``meta``
    carries as ``round_seed`` (a broker should check it is the round's own).

    Decoding scatters into zeros. By default it does not rescale, so the decoded vector is ``k/d`` of
    the update in expectation: biased towards zero (like a smaller step) but with no added variance.
    ``unbiased=True`` multiplies by ``d/k``, which makes it unbiased at the cost of variance: the
    expected squared error becomes ``(d/k - 1) * ||x||^2``, large for small fractions. This is the
    decoder's choice; the payload is the same.

    ``error_feedback`` (spec ``"randk:F+ef"``): like top-k, encode adds the residual first and keeps
    ``x + residual - sent`` for the next round; the payload and decoding are unchanged. It pays off
    when most coordinates come round within a few rounds (on digits, F = 0.25 gains 1.4 points over
    no feedback; F = 0.125 loses 3, since stale coordinates arrive too late).

    ``secure_compatible`` is True (if the quantizer's is): every worker keeps the same coordinates, so
    masked value vectors still sum coordinate by coordinate. Stateless unless ``error_feedback``.
    Raises ``ValueError`` for a fraction outside (0, 1].
    """

    def __init__(self, fraction: float, unbiased: bool = False, quantizer: Quantizer | None = None,
                 error_feedback: bool = False) -> None:
        self.fraction = check_fraction(fraction)
        self.unbiased = unbiased
        self.quantizer = quantizer
        self.error_feedback = error_feedback
        self.name = _spec("randk", self.fraction, quantizer, error_feedback)
        self.secure_compatible = quantizer is None or quantizer.secure_compatible
        self.residual: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the error-feedback residual."""
        self.residual = None

    def select(self, vector: np.ndarray, *, round_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """This round's shared indices and the values to send there: ``vector`` (plus the residual,
        with error feedback) at those indices. With error feedback the residual becomes everything
        else; the caller that encodes the values itself (secure aggregation) uses this. Raises
        ``ValueError`` for a bad vector or seed, or a length that differs from the residual's."""
        x = check_vector(vector)
        round_seed = check_round_seed(round_seed)
        idx = shared_indices(x.size, self.fraction, round_seed)
        if not self.error_feedback:
            return idx, x[idx]
        acc = self._accumulate(x)
        values = acc[idx].copy()
        acc[idx] = 0.0
        self.residual = acc
        return idx, values

    def _accumulate(self, x: np.ndarray) -> np.ndarray:
        if self.residual is None:
            return x.astype(np.float32, copy=True)
        if self.residual.size != x.size:
            raise ValueError(f"update has {x.size} coordinates but the residual has {self.residual.size}")
        total: np.ndarray = x + self.residual
        return total

    def encode(self, vector: np.ndarray, *, round_seed: int) -> Compressed:
        """The values of ``vector`` (plus the residual, with error feedback) at this round's shared
        indices. Raises ``ValueError`` for a bad vector or seed, or a length that differs from the
        residual's."""
        x = check_vector(vector)
        round_seed = check_round_seed(round_seed)
        idx = shared_indices(x.size, self.fraction, round_seed)
        acc = self._accumulate(x) if self.error_feedback else x
        tensors, meta, sent = _encode_values(acc[idx], self.quantizer, round_seed)
        if self.error_feedback:
            acc[idx] -= sent  # the quantization error is carried too, as in top-k
            self.residual = acc
        meta = {"codec": self.name, "length": int(x.size), "round_seed": round_seed, **meta}
        return Compressed(tensors, meta, _payload_bytes(tensors, meta))

    def decode(self, c: Compressed, length: int) -> np.ndarray:
        """Scatter the values into zeros of ``length`` at the indices of ``meta["round_seed"]``
        (times ``d/k`` if ``unbiased``). Raises ``ValueError`` for an invalid payload."""
        expect_meta(c, self.name, length)
        seed = c.meta.get("round_seed")
        if not isinstance(seed, int):
            raise ValueError(f"payload round_seed must be an int, got {seed!r}")  # noqa: TRY004 (peer data)
        idx = shared_indices(length, self.fraction, seed)
        out = np.zeros(length, dtype=np.float32)
        values = _decode_values(c, self.quantizer, idx.size)
        out[idx] = values * np.float32(length / idx.size) if self.unbiased and idx.size else values
        return out

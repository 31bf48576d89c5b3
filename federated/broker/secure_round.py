"""Glue between the coordinator and the secure-aggregation state machine (broker side).

Layout of an encoded input (shared with :mod:`federated.worker.secure`): the model update flattened in
sorted tensor-name order, then ``weight * loss``, ``weight * accuracy`` (so the broker learns only their
weighted sums, never one worker's), then the weight itself. The decoded sum divided by the summed weight
is the weighted FedAvg of the survivors' clipped updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from federated.crypto.fixedpoint import decode_sum
from federated.crypto.params import SecAggParams

__all__ = ["EXTRA_COORDINATES", "DecodedSum", "decode_round", "flatten", "vector_length"]

#: Coordinates after the model update: weight * loss, weight * accuracy, weight.
EXTRA_COORDINATES = 3


def vector_length(weights: Mapping[str, np.ndarray]) -> int:
    """Coordinates of an encoded input for a model with ``weights``."""
    return sum(int(w.size) for w in weights.values()) + EXTRA_COORDINATES


def flatten(update: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate tensors in sorted-name order (float64)."""
    return np.concatenate([np.asarray(update[k], np.float64).ravel() for k in sorted(update)])


@dataclass(frozen=True)
class DecodedSum:
    """The weighted mean update (per tensor) and weighted-mean training metrics of the survivors."""

    mean_update: dict[str, np.ndarray]
    weight: float
    train_loss: float
    train_accuracy: float


def decode_round(total: np.ndarray, params: SecAggParams, reference: Mapping[str, np.ndarray]) -> DecodedSum:
    """Turn the unmasked uint32 sum into the mean update shaped like ``reference``.

    Raises ``ValueError`` if the summed weight is not positive (no real input was summed).
    """
    data, weight = decode_sum(total, params.frac_bits)
    if not weight > 0:
        raise ValueError(f"the secure sum has weight {weight}; nothing to average")
    flat = data[:-2] / weight
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(reference):
        size = int(reference[name].size)
        out[name] = flat[offset:offset + size].reshape(reference[name].shape).astype(np.float32)
        offset += size
    return DecodedSum(out, weight, float(data[-2] / weight), float(data[-1] / weight))

"""What happens to an update after local training, before it leaves the worker.

Plain rounds: the update, or the codec's compressed payload, in an UPDATE message. Secure rounds: the
fixed-point encoding of the clipped update (with this worker's share of distributed-DP noise when the
round asks for it), which :mod:`federated.worker.session` masks once the shares are in. This module holds
no protocol state and does no I/O: the session calls it on the training thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.aggregation.vectors import flatten
from federated.compression import secure_plan
from federated.compression.sparsify import shared_indices
from federated.crypto.floor import SafetyFloor
from federated.crypto.params import SecAggParams
from federated.privacy.noise import POISSON_EXACT_MAX
from federated.protocol import Task, Update, local_seconds
from federated.worker.randomness import LocalRandomness
from federated.worker.secure import encode_input

__all__ = ["MAX_SKELLAM_MU", "SecureInput", "distributed_noise_multiplier", "encode_update", "non_finite",
           "skellam_mu_of"]

#: The largest per-worker Skellam mean a worker accepts: 16 exact Poisson draws a side per coordinate.
MAX_SKELLAM_MU = 16 * POISSON_EXACT_MAX


@dataclass(frozen=True)
class SecureInput:
    """A trained, fixed-point encoded input waiting for the masking stage (``local_s``: compute seconds)."""

    round_id: int
    encoded: np.ndarray
    local_s: float


def skellam_mu_of(config: Mapping[str, Any]) -> float | None:
    """The per-worker Skellam ``mu`` a TASK asks for (None: no distributed DP). Raises ``ValueError`` for
    a value that is not a finite non-negative number."""
    privacy = config.get("privacy") or {}
    if not isinstance(privacy, Mapping):
        raise ValueError("privacy must be an object")  # noqa: TRY004 (a bad field of a TASK, as every other)
    mu = privacy.get("skellam_mu")
    if mu is None:
        return None
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"privacy.skellam_mu must be a finite number >= 0, got {mu!r}")
    if mu > MAX_SKELLAM_MU:
        # An honest broker picks the fixed-point scale so that mu <= POISSON_EXACT_MAX (one exact draw per
        # side); a larger one would only make this worker draw mu / 1e10 Poisson variates per coordinate.
        raise ValueError(f"privacy.skellam_mu {mu:.3g} is above the {MAX_SKELLAM_MU:.3g} a worker draws")
    return float(mu)


def distributed_noise_multiplier(config: Mapping[str, Any], floor: SafetyFloor) -> float:
    """The noise multiplier a TASK's distributed-DP noise gives the smallest sum this worker lets be
    unmasked (``floor.survivors_needed(threshold)`` survivors): ``sqrt(2 mu m) / (clip * 2^frac_bits)``.
    0.0 when the TASK adds no distributed noise. Raises ``ValueError`` for bad settings."""
    mu = skellam_mu_of(config)
    if mu is None or "secagg" not in config:
        return 0.0
    params = SecAggParams.from_dict(config["secagg"])
    survivors = floor.survivors_needed(params.threshold)
    return math.sqrt(2.0 * mu * survivors) / (float(params.clip) * 2.0**params.frac_bits)


def encode_update(task: Task, worker_id: str, update: dict[str, np.ndarray], metrics: dict[str, float],
                  num_samples: int, codec_for: Callable[[str], Any],
                  randomness: LocalRandomness) -> list[bytes | memoryview] | SecureInput:
    """The frames of a plain UPDATE, or the encoded input of a secure round.

    ``codec_for(spec)`` gives this worker's codec for a compression spec (it keeps error feedback's
    residual between rounds). Raises ``ValueError``/``KeyError``/``TypeError`` for settings the TASK gets
    wrong (the caller answers ``bad_task``).
    """
    config = task.config
    if "secagg" in config:
        params = SecAggParams.from_dict(config["secagg"])
        indices = None
        # Under secure aggregation a codec only picks the shared coordinates (and, through the TASK's
        # ring_bits, the 16-bit sums that quantize): see federated.compression.secure.
        spec = str(config.get("compression", "none"))
        plan = secure_plan(spec)
        to_encode: Any = update
        if plan.error_feedback:
            _, to_encode = codec_for(spec).select(flatten(update, np.float32),
                                                  round_seed=int(config["compression_seed"]))
        elif plan.fraction is not None:
            size = sum(int(v.size) for v in update.values())
            indices = shared_indices(size, plan.fraction, int(config["compression_seed"]))
        mu = skellam_mu_of(config)
        encoded = encode_input(to_encode, metrics, num_samples, params, indices, skellam_mu=mu,
                               rounding_seed=randomness.rounding_seed(),
                               noise=randomness.noise_generator() if mu is not None else None)
        return SecureInput(task.round_id, encoded, local_seconds(metrics))
    spec = config.get("compression", "none")
    if spec != "none":
        packed = codec_for(str(spec)).encode(flatten(update, np.float32), round_seed=int(config["compression_seed"]))
        return Update(worker_id, task.round_id, task.stage, num_samples, metrics, packed.tensors,
                      {"meta": packed.meta}).to_frames()
    return Update(worker_id, task.round_id, task.stage, num_samples, metrics, update).to_frames()


def non_finite(update: Mapping[str, np.ndarray], metrics: Mapping[str, float]) -> str:
    """What in a training result is NaN or infinite (its tensors' and metrics' names), or "" if nothing is.

    A diverged training run gives such values; an UPDATE carrying them is refused by the broker as
    malformed (and its metrics cannot even be written as JSON), after which the broker would wait for
    this worker until the round's deadline, so the worker reports the failure instead."""
    bad = [name for name, value in update.items() if not np.isfinite(value).all()]
    bad += [name for name, value in metrics.items() if not math.isfinite(value)]
    return f"{', '.join(sorted(bad))} not finite" if bad else ""

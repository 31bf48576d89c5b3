"""Central DP divides the clipped sum by the planned cohort size and ignores sample counts.

README / DESIGN §6 (McMahan et al. 2018): the broker clips each update to L2 norm ``clip``, sums them,
adds N(0, (sigma clip)^2) per coordinate and divides by ``clients_per_round``, the *planned* cohort size,
so the released model neither depends on how many workers answered nor lets a worker's sample count
raise its influence above ``clip``. The cohort here has four workers with very different sample counts
(5, 500, 50, and one that leaves), updates of different norms (one inside the clip, two far outside),
and the released mean is checked against the formula, exactly without noise and within a
bound derived from the noise with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from federated.broker.coordinator import STAGE_TRAIN, Coordinator, Outbound
from federated.broker.store import RoundRecord
from federated.config import BrokerConfig, FederatedConfig, PrivacyConfig
from federated.privacy import central
from federated.protocol import Bye, Hello, Update

T0 = 1000.0
PLANNED = 4
SAMPLES = {"w1": 5, "w2": 500, "w3": 50, "w4": 80}
CLIP = 1.0


def _weights() -> dict[str, np.ndarray]:
    # Zeros: with FedAvg's server step (w + 1.0 * mean) the new global model *is* the released mean.
    return {"w": np.zeros(4, np.float32), "b": np.zeros((2, 3), np.float32)}


def _updates() -> dict[str, dict[str, np.ndarray]]:
    w = _weights()
    return {
        "w1": {k: np.full(v.shape, 0.1, np.float32) for k, v in w.items()},        # norm 0.32: kept as is
        "w2": {k: np.full(v.shape, 3.0, np.float32) for k, v in w.items()},        # norm 9.5: clipped to 1
        "w3": {"w": np.array([4.0, -2.0, 0.0, 1.0], np.float32),                    # norm 5.1: clipped to 1
               "b": np.array([[0.5, 0.0, -1.0], [2.0, 0.0, 3.0]], np.float32)},
    }


def _clipped_sum(updates: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The oracle: each update scaled to L2 norm <= CLIP over all its tensors, then summed (float64)."""
    total = {k: np.zeros(v.shape, np.float64) for k, v in _weights().items()}
    for update in updates.values():
        norm = math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in update.values()))
        scale = min(1.0, CLIP / norm)
        for k, v in update.items():
            total[k] += v.astype(np.float64) * scale
    return total


def _round(sigma: float) -> tuple[Coordinator, list[RoundRecord]]:
    """One central-DP round: four workers tasked, three answer, the fourth leaves (BYE) without answering."""
    broker = BrokerConfig(round_timeout_s=10.0, start_timeout_s=5.0, heartbeat_interval_s=1.0,
                          heartbeat_timeout_s=3.0, max_failed_rounds=2)
    config = FederatedConfig(num_clients=PLANNED, clients_per_round=PLANNED, min_clients=2, num_rounds=3,
                             broker=broker, privacy=PrivacyConfig(mode="central", noise_multiplier=sigma, clip=CLIP))
    records: list[RoundRecord] = []
    coord = Coordinator(config, _weights(), on_round=records.append, clock=lambda: T0)

    def send(wid: str, msg: Any) -> list[Outbound]:
        return coord.handle(f"r-{wid}".encode(), [bytes(f) for f in msg.to_frames()], T0)

    for wid, n in SAMPLES.items():
        send(wid, Hello(wid, n))
    coord.tick(T0)
    assert coord.round is not None and sorted(coord.round.cohort) == sorted(SAMPLES)
    rid = coord.round.round_id
    for wid, update in _updates().items():
        send(wid, Update(wid, rid, STAGE_TRAIN, SAMPLES[wid], {}, update))
    send("w4", Bye("w4", "leaving"))
    assert len(records) == 1 and records[0].status == "complete"
    assert records[0].survivors == ("w1", "w2", "w3") and records[0].dropped == ("w4",)
    return coord, records


def _flat(tree: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in sorted(tree)])


class _NoNoise:
    """Stands in for the noise generator: exact zeros, so the mean can be checked to the last bit."""

    def normal(self, loc: float, scale: float, size: Any) -> np.ndarray:
        return np.zeros(size, np.float64)


def test_released_mean_is_the_clipped_sum_over_the_planned_cohort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(central, "noise_rng", _NoNoise)
    coord, _ = _round(sigma=1.0)
    expected = {k: (v / PLANNED).astype(np.float32) for k, v in _clipped_sum(_updates()).items()}
    for k, v in expected.items():
        # float32 rounding of the same float64 result: equal to within one ulp.
        np.testing.assert_allclose(coord.weights[k], v, rtol=0, atol=1e-7, err_msg=k)
    # What the wrong rules would have released, so the check above cannot pass by accident: the clipped
    # sum over the three who answered, and the sample-weighted mean of the raw updates.
    released = _flat(coord.weights)
    survivors_only = _flat(_clipped_sum(_updates())) / 3
    weighted = sum(SAMPLES[w] * _flat(u) for w, u in _updates().items()) / sum(SAMPLES[w] for w in _updates())
    assert np.abs(released - survivors_only).max() > 0.05
    assert np.abs(released - weighted).max() > 0.05

def test_with_real_noise_the_mean_is_within_the_noise_bound() -> None:
    # No test hook: the broker's own CSPRNG-seeded noise, std sigma * clip / PLANNED per coordinate.
    sigma = 0.01
    coord, _ = _round(sigma=sigma)
    expected = {k: v / PLANNED for k, v in _clipped_sum(_updates()).items()}
    std = sigma * CLIP / PLANNED
    # 10 coordinates, each |N(0, std^2)| > 6 std with probability 2.0e-9: P(any) < 2e-8 (< 1e-6 per run).
    bound = 6.0 * std + 1e-6  # + float32 rounding of values below 1
    deviation = max(float(np.abs(coord.weights[k] - v).max()) for k, v in expected.items())
    assert deviation <= bound
    # The wrong denominators are 0.04 or more away on some coordinate: far outside the bound (0.015).
    assert np.abs(_flat(_clipped_sum(_updates())) / 3 - _flat(expected)).max() > 2 * bound

"""A malicious member against the broker's checks of a secure sum (issue 13, items 3 and 4).

The broker sees only the unmasked sum, so a cohort member can put anything in its own input. Each attack
below is a member writing a chosen vector where its honest encoding would go, through real
:class:`~federated.crypto.secagg_worker.SecAggWorker` state machines and a real :class:`Coordinator`:

- under distributed DP (where the old code switched the plausibility check off and only asked for a
  positive weight): a weight coordinate of ``1 - (n-1) * 2^f`` (summed weight one unit: the mean is
  the noised sum times 2^f), large data coordinates, or a weighted loss beyond any worker's cap;
- without DP: a weight 131 times the cap (the mean becomes the member's chosen vector, of norm below the
  clip, which the old norm check let through), or metric sums outside their range.

Before the fix each of these rounds completed and applied (or recorded) the member's chosen sum; now each
is refused like an implausible bucket: the round fails, the model is unchanged and the bucket's members
are dropped as suspects. Honest sums at the edges of every bound, and honest noisy sums, still pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from support import SECURE_WEIGHTS, HonestMember, run_coordinator_round

from federated.broker.coordinator import Coordinator
from federated.broker.secure_round import NOISE_TAIL, decode_round
from federated.config import BrokerConfig, FederatedConfig, PrivacyConfig, SecureConfig
from federated.crypto import fixedpoint
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_input import EXTRA_COORDINATES
from federated.privacy.noise import skellam_share
from federated.privacy.skellam import noise_norm_bound
from federated.protocol import Task

N = 5
DIM = sum(int(v.size) for v in SECURE_WEIGHTS.values())
Craft = Callable[[np.ndarray, SecAggParams], np.ndarray]


def _config(*, dp: bool) -> FederatedConfig:
    privacy = PrivacyConfig(mode="distributed", noise_multiplier=1.0, clip=1.0) if dp else PrivacyConfig()
    return FederatedConfig(num_clients=N, clients_per_round=N, num_rounds=1, min_clients=3,
                           secure=SecureConfig(enabled=True), privacy=privacy,
                           broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))


class Cheater(HonestMember):
    """A member that sends ``craft(its honest encoding, params)`` in place of its encoding."""

    def __init__(self, wid: str, samples: int, delta: float, craft: Craft) -> None:
        super().__init__(wid, samples, delta)
        self.craft = craft

    def answer(self, msg: Any) -> Any:
        reply = super().answer(msg)
        if isinstance(msg, Task):
            assert self.encoded is not None
            self.encoded = self.craft(self.encoded.copy(), self.params).astype(np.uint32)
        return reply


def _run(craft: Craft, *, dp: bool) -> tuple[Coordinator, list[HonestMember]]:
    workers: list[HonestMember] = [HonestMember(f"w{i}", 10 * (i + 1), 0.01 * (i + 1)) for i in range(N - 1)]
    workers.append(Cheater("evil", 10, 0.0, craft))
    coordinator, _ = run_coordinator_round(list(workers), config=_config(dp=dp))
    return coordinator, workers


def _assert_refused(coordinator: Coordinator, what: str) -> None:
    (record,) = coordinator.history
    assert record.status == "failed", (record.status, record.error)
    assert "no secure sum could come from honest inputs" in (record.error or "") and what in (record.error or "")
    for name, value in coordinator.weights.items():  # nothing was applied
        np.testing.assert_array_equal(value, SECURE_WEIGHTS[name], err_msg=name)
    assert "evil" in record.dropped and "evil" not in record.survivors


def _set(vector: np.ndarray, index: int, value: int) -> np.ndarray:
    vector[index] = value % 2**32
    return vector


# ---------------------------------------------------------------------- distributed DP (item 3)


def test_distributed_dp_sum_with_a_weight_of_one_unit_is_refused() -> None:
    # Four honest weights of 2^f plus 1 - 4 * 2^f: the summed weight is one unit, 2^-f. The old code
    # checked only that it was positive and divided the noised sum by it (a mean of norm ~1e9).
    coordinator, _ = _run(lambda v, p: _set(v, -1, 1 - (N - 1) * 2**p.frac_bits), dp=True)
    _assert_refused(coordinator, "summed weight")


def test_distributed_dp_sum_with_an_extra_honest_weight_is_refused() -> None:
    # Under distributed DP every weight is exactly 1: a member weighing 2 is no honest encoding either.
    coordinator, _ = _run(lambda v, p: _set(v, -1, 2 * 2**p.frac_bits), dp=True)
    _assert_refused(coordinator, "not exactly 5")


def test_distributed_dp_sum_with_large_data_coordinates_is_refused() -> None:
    # Twice the largest norm clip, rounding and the noise tail allow, spread over the update: the old
    # code exempted distributed DP from the norm check altogether.
    def craft(vector: np.ndarray, params: SecAggParams) -> np.ndarray:
        mu = coordinator_mu(params)
        allowed = N * params.clip * 2**params.frac_bits + math.sqrt(DIM) * N + noise_norm_bound(N * mu, DIM, NOISE_TAIL)
        shift = math.ceil(2 * allowed / math.sqrt(DIM))
        assert shift + allowed < 2**31  # the sum cannot wrap: this is a plain lie, not an overflow
        signed = vector.view(np.int32).astype(np.int64)
        signed[:DIM] += shift
        return signed.astype(np.uint32)

    coordinator, _ = _run(craft, dp=True)
    _assert_refused(coordinator, "beyond the clip bound")


def test_distributed_dp_sum_with_a_weighted_loss_out_of_range_is_refused() -> None:
    # Honest workers send 0 for loss and accuracy under distributed DP; the cap is W * max(clip, 1).
    coordinator, _ = _run(lambda v, p: _set(v, -6, 2 * N * 2**p.frac_bits), dp=True)
    _assert_refused(coordinator, "weighted loss")


def coordinator_mu(params: SecAggParams) -> float:
    """The per-worker Skellam mu the ledger plans for ``_config(dp=True)`` (what the TASK carried)."""
    from federated.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(_config(dp=True), DIM)
    assert ledger.frac_bits == params.frac_bits
    return ledger.skellam_mu


def test_an_honest_distributed_dp_round_is_kept() -> None:
    coordinator, workers = _run(lambda v, p: v, dp=True)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    assert record.survivors == tuple(sorted(w.wid for w in workers)) and record.num_samples == N


# ------------------------------------------------------------------------ chosen weight (item 4)


def test_a_member_claiming_131_times_the_weight_cap_is_refused() -> None:
    # The member weighs 131 * weight_cap and sends 131 * weight_cap * target: the mean is ~target, a
    # vector it chose, of norm below the clip, so the old norm check passed it and the model moved to it.
    target = 3.0

    def craft(vector: np.ndarray, params: SecAggParams) -> np.ndarray:
        weight = 131 * params.weight_cap * 2**params.frac_bits
        assert weight * target < 2**31  # no wrap: the sum decodes to exactly this claim
        vector[:DIM] = int(weight * target)
        vector[-3:-1] = 0
        vector[-1] = weight
        return vector

    coordinator, _ = _run(craft, dp=False)
    _assert_refused(coordinator, "summed weight")


# The tail of an input (crypto.secagg_input): loss, accuracy, evaluation loss, evaluation accuracy, evaluated
# weight, weight.
@pytest.mark.parametrize(("index", "value", "what"), [
    (-6, 2**30, "weighted loss"),  # far beyond W * max(clip, 1)
    (-6, -(2**20), "weighted loss"),  # a negative loss sum
    (-5, -(2**20), "weighted accuracy"),  # a negative accuracy sum
    (-5, 2**30, "weighted accuracy"),  # accuracy above 1
    (-4, 2**20, "weighted evaluation loss"),  # an evaluation loss with nobody evaluating
    (-3, 2**20, "weighted evaluation accuracy"),  # an evaluation accuracy with nobody evaluating
    (-2, -(2**20), "evaluated weight"),  # a negative evaluated weight
    (-2, 2**30, "evaluated weight"),  # more evaluated weight than weight
])
def test_metric_sums_out_of_range_are_refused(index: int, value: int, what: str) -> None:
    coordinator, _ = _run(lambda v, p: _set(v, index, value), dp=False)
    _assert_refused(coordinator, what)


def test_a_weight_that_is_not_whole_is_refused() -> None:
    coordinator, _ = _run(lambda v, p: _set(v, -1, int(v[-1]) + 1), dp=False)
    _assert_refused(coordinator, "summed weight")


# --------------------------------------------------------------- honest sums at the edges pass


def _params(*, weight_cap: int, clip: float, n: int, dim: int = DIM, frac_bits: int | None = None) -> SecAggParams:
    frac_bits = fixedpoint.max_frac_bits(n, clip, weight_cap) if frac_bits is None else frac_bits
    return SecAggParams(n - 1, n - 1, clip, weight_cap, frac_bits, n, dim + EXTRA_COORDINATES)


def _sum(encodings: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(encodings[0])
    for e in encodings:
        total += e  # mod 2^32, as the unmasked sum is
    return total


@pytest.mark.parametrize("seed", range(20))
def test_honest_sums_at_every_bound_are_kept(seed: int) -> None:
    # Every worker at the weight cap, its update at exactly the clip norm, all pointing the same way (so
    # the mean's norm is the clip), the loss at max(clip, 1) and the accuracy 1: the largest honest sum.
    rng = np.random.default_rng(seed)
    clip, cap, n = float(rng.uniform(0.2, 3.0)), int(rng.integers(1, 2000)), int(rng.integers(3, 12))
    params = _params(weight_cap=cap, clip=clip, n=n)
    direction = rng.normal(size=DIM)
    update = direction / np.linalg.norm(direction) * clip * 1.5  # clipped down to the bound
    top = max(clip, 1.0)
    encodings = [fixedpoint.encode(update, cap, clip=clip, frac_bits=params.frac_bits, seed=rng.bytes(32),
                                   extra=(top, 1.0, top, 1.0, 1.0)) for _ in range(n)]
    decoded = decode_round(_sum(encodings), params, SECURE_WEIGHTS, inputs=n)
    assert decoded.weight == n * cap and decoded.eval_weight == n * cap
    assert decoded.train_loss == pytest.approx(top, rel=1e-3) and decoded.train_accuracy == pytest.approx(1.0, rel=1e-3)
    assert decoded.eval_loss == pytest.approx(top, rel=1e-3) and decoded.eval_accuracy == pytest.approx(1.0, rel=1e-3)
    # And the smallest: weight 1 each, zero metrics, nobody evaluating.
    small = [fixedpoint.encode(update, 1, clip=clip, frac_bits=params.frac_bits, seed=rng.bytes(32),
                               extra=(0.0,) * (EXTRA_COORDINATES - 1)) for _ in range(n)]
    low = decode_round(_sum(small), params, SECURE_WEIGHTS, inputs=n)
    assert low.weight == n and low.eval_weight == 0 and low.eval_accuracy is None


def test_honest_noisy_sums_are_kept_and_the_noise_tail_is_what_it_says() -> None:
    # Distributed DP: n weight-1 inputs at the clip, all aligned, plus each worker's Skellam share. Over
    # 300 such sums none is refused (each would be with probability <= 1e-9). The same sum with its
    # noise scaled 1.5x beyond the bound's tail is refused.
    rng = np.random.default_rng(7)
    n, clip, dim = 6, 1.0, 2000
    reference = {"x": np.zeros(dim, np.float32)}
    # A scale of 2^16, as the ledger picks one: each share's mu (~1.3e8) stays one exact Poisson draw a
    # side (at the largest wrap-safe scale mu would be ~8.8e12, 880 draws a side: minutes for 1,800 shares).
    params = _params(weight_cap=1, clip=clip, n=n, dim=dim, frac_bits=16)
    mu = (clip * 2**params.frac_bits / 4) ** 2 / 2  # modest: sigma * C * 2^f / 4 per worker
    update = np.ones(dim) * clip / math.sqrt(dim)
    for _ in range(300):
        encodings = [fixedpoint.encode(update, 1, clip=clip, frac_bits=params.frac_bits, seed=rng.bytes(32),
                                       extra=(0.0,) * (EXTRA_COORDINATES - 1)) for _ in range(n)]
        noisy = [e.view(np.int32).astype(np.int64) for e in encodings]
        for row in noisy:
            row[:dim] += skellam_share(dim, mu, rng)
        total = _sum([row.astype(np.uint32) for row in noisy])
        decode_round(total, params, reference, inputs=n, noise_mu=mu)  # raises if refused
    bound = noise_norm_bound(n * mu, dim, NOISE_TAIL)
    loud = np.zeros(dim + EXTRA_COORDINATES, np.int64)
    loud[:dim] = math.ceil(1.5 * bound / math.sqrt(dim))
    loud[-1] = n * 2**params.frac_bits
    with pytest.raises(ValueError, match="beyond the clip bound"):
        decode_round(loud.astype(np.uint32), params, reference, inputs=n, noise_mu=mu)


def test_decode_round_needs_the_input_count() -> None:
    params = _params(weight_cap=4, clip=1.0, n=3)
    total = np.zeros(DIM + EXTRA_COORDINATES, np.uint32)
    with pytest.raises(TypeError):
        decode_round(total, params, SECURE_WEIGHTS)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="inputs must be an integer"):
        decode_round(total, params, SECURE_WEIGHTS, inputs=0)

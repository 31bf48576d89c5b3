"""Under distributed DP a worker weighs 1 whatever ``weight_cap`` the TASK names (README: the weight is
then 1, because a sample count would scale this worker's influence past the clip the noise is sized
for). An honest broker sends ``weight_cap`` 1 anyway, so only a cheating broker's TASK shows the
difference; the mutation check (``benchmarks/mutation.py``) found nothing testing it."""

from __future__ import annotations

import numpy as np

from federated.crypto.fixedpoint import decode_sum
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_input import EXTRA_COORDINATES
from federated.worker.secure import encode_input


def test_a_distributed_dp_input_weighs_one_even_when_the_task_allows_more() -> None:
    params = SecAggParams(
        threshold=2, degree=3, clip=1.0, weight_cap=1024, frac_bits=8, n_max=4, vector_length=4 + EXTRA_COORDINATES
    )
    update = np.full(4, 0.25, np.float32)
    metrics = {"loss": 0.5, "accuracy": 0.5}
    noised = encode_input(update, metrics, 300, params, skellam_mu=0.0, rounding_seed=bytes(32))
    data, weight = decode_sum(noised, params.frac_bits)
    assert weight == 1.0 and not data[4:].any()  # loss, accuracy and evaluation: all 0
    plain = encode_input(update, metrics, 300, params, rounding_seed=bytes(32))
    assert decode_sum(plain, params.frac_bits)[1] == 300.0  # without noise the sample count is the weight

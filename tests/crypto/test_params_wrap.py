"""A sum that could wrap around 2^ring_bits is refused where the parameters are checked: when a run's
configuration loads, and when a worker parses a TASK's secure-aggregation parameters (README: "a
configuration whose sum could wrap around 2^32 is refused when it loads"). Found unguarded by the
mutation check (``benchmarks/mutation.py``): ``check_no_wrap`` itself was tested, but nothing failed when
:meth:`SecAggParams.validate` stopped calling it."""

from __future__ import annotations

import pytest

from federated.config import ConfigError, FederatedConfig, SecureConfig
from federated.crypto.errors import ParameterError
from federated.crypto.fixedpoint import max_frac_bits
from federated.crypto.params import SecAggParams

N, CLIP, CAP = 10, 1.0, 1024


def _params(frac_bits: int) -> SecAggParams:
    return SecAggParams(
        threshold=5, degree=9, clip=CLIP, weight_cap=CAP, frac_bits=frac_bits, n_max=N, vector_length=8
    )


def test_the_largest_safe_scale_is_accepted_and_the_next_refused() -> None:
    safe = max_frac_bits(N, CLIP, CAP)
    _params(safe).validate()
    with pytest.raises(ParameterError, match="wrap"):
        _params(safe + 1).validate()


def test_a_worker_refuses_task_parameters_whose_sum_could_wrap() -> None:
    task = _params(max_frac_bits(N, CLIP, CAP) + 1).to_dict()
    with pytest.raises(ParameterError):
        SecAggParams.from_dict(task)


def test_a_run_whose_sum_could_wrap_is_refused_when_it_loads() -> None:
    frac_bits = max_frac_bits(N, CLIP, CAP) + 1
    with pytest.raises(ConfigError, match="wrap"):
        FederatedConfig(
            num_clients=N,
            clients_per_round=N,
            secure=SecureConfig(enabled=True, clip=CLIP, weight_cap=CAP, frac_bits=frac_bits),
        )

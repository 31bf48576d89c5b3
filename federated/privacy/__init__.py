"""Differential privacy: accounting, clipping, noise, distributed (Skellam) noise, budget, DP-SGD.

One module per concept:

- ``accountant``: :class:`PrivacyAccountant` and ``compute_epsilon``/``calibrate_sigma`` over Google's
  ``dp-accounting`` (RDP and PLD) for Poisson-subsampled Gaussian releases
- ``budget``: :class:`PrivacyBudgetTracker`, what a run has spent and whether the next round may start
- ``clipping``: user-level ``clip_update`` (``clip_vector`` for a flat update) and :class:`AdaptiveClipper`
  (Andrew et al. 2021)
- ``central``: ``central_mean``, the broker's release under user-level central DP (clip, sum, noise,
  divide by the planned cohort)
- ``noise``: Gaussian noise for NumPy trees, Skellam shares (exact Poisson draws at any mean),
  ``noise_rng`` (OS-seeded)
- ``skellam``: distributed DP with Skellam noise: dropout-safe plans, sensitivity, RDP, wrap headroom,
  the noise's norm tail (the broker's bound on a noised sum)
- ``manager``: the seed README's :class:`DifferentialPrivacyManager` façade
- ``dpsgd``: record-level DP-SGD in MLX (per-example gradients with ``mx.vmap``); the only module here
  that imports MLX, reached as ``federated.privacy.dpsgd`` and not re-exported

Names are resolved on first use (module ``__getattr__``): ``import federated.privacy`` loads neither MLX
(the broker must run without it) nor ``dp_accounting``/SciPy (1-2 s that a worker should not pay).
"""

from __future__ import annotations

import importlib
import typing  # as a module, so that TYPE_CHECKING and Any are not public names of this package

if typing.TYPE_CHECKING:
    from federated.privacy.accountant import (
        ACCOUNTANTS,
        PrivacyAccountant,
        calibrate_sigma,
        compute_epsilon,
    )
    from federated.privacy.budget import PrivacyBudgetTracker
    from federated.privacy.central import central_mean
    from federated.privacy.clipping import (
        AdaptiveClipper,
        clip_factor,
        clip_update,
        clip_vector,
        combined_noise_multiplier,
        global_norm,
        update_noise_multiplier,
    )
    from federated.privacy.manager import DifferentialPrivacyManager
    from federated.privacy.noise import POISSON_EXACT_MAX, gaussian_noise_like, noise_rng, skellam_share
    from federated.privacy.skellam import (
        SKELLAM_ORDERS,
        SkellamPlan,
        add_share,
        check_no_wrap_with_noise,
        noise_headroom,
        noise_norm_bound,
        plan_skellam,
        skellam_epsilon,
        skellam_mu_per_worker,
        skellam_rdp,
        skellam_sensitivities,
    )

__all__ = [
    "ACCOUNTANTS",
    "POISSON_EXACT_MAX",
    "SKELLAM_ORDERS",
    "AdaptiveClipper",
    "DifferentialPrivacyManager",
    "PrivacyAccountant",
    "PrivacyBudgetTracker",
    "SkellamPlan",
    "add_share",
    "calibrate_sigma",
    "central_mean",
    "check_no_wrap_with_noise",
    "clip_factor",
    "clip_update",
    "clip_vector",
    "combined_noise_multiplier",
    "compute_epsilon",
    "gaussian_noise_like",
    "global_norm",
    "noise_headroom",
    "noise_norm_bound",
    "noise_rng",
    "plan_skellam",
    "skellam_epsilon",
    "skellam_mu_per_worker",
    "skellam_rdp",
    "skellam_sensitivities",
    "skellam_share",
    "update_noise_multiplier",
]

_HOME = {
    "ACCOUNTANTS": "accountant",
    "PrivacyAccountant": "accountant",
    "calibrate_sigma": "accountant",
    "compute_epsilon": "accountant",
    "PrivacyBudgetTracker": "budget",
    "central_mean": "central",
    "AdaptiveClipper": "clipping",
    "clip_factor": "clipping",
    "clip_update": "clipping",
    "clip_vector": "clipping",
    "combined_noise_multiplier": "clipping",
    "global_norm": "clipping",
    "update_noise_multiplier": "clipping",
    "DifferentialPrivacyManager": "manager",
    "POISSON_EXACT_MAX": "noise",
    "gaussian_noise_like": "noise",
    "noise_rng": "noise",
    "skellam_share": "noise",
    "SKELLAM_ORDERS": "skellam",
    "SkellamPlan": "skellam",
    "add_share": "skellam",
    "check_no_wrap_with_noise": "skellam",
    "noise_headroom": "skellam",
    "noise_norm_bound": "skellam",
    "plan_skellam": "skellam",
    "skellam_epsilon": "skellam",
    "skellam_mu_per_worker": "skellam",
    "skellam_rdp": "skellam",
    "skellam_sensitivities": "skellam",
}


def __getattr__(name: str) -> typing.Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

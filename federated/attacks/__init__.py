"""Byzantine attack simulation: crafting strategies and the colluding attacker process's fit function.

Kept apart from :mod:`federated.worker` so the honest worker has no attack code path: ``fl simulate``
hands :meth:`ColludingAttackers.fit` to the attacker process's ``WorkerLoop`` in place of the honest fit.
Importing this package imports neither MLX nor ZeroMQ.
"""

from federated.attacks.colluding import ColludingAttackers
from federated.attacks.strategies import (
    ATTACKS,
    GAUSSIAN_STD,
    IPM_EPSILON,
    IPM_EPSILON_LARGE,
    IPM_EPSILON_SMALL,
    MINMAX_PERTURBATIONS,
    POOLED_ATTACKS,
    SIGN_FLIP_SCALE,
    alie,
    alie_z,
    flip_labels,
    gaussian,
    ipm,
    minmax,
    minmax_gamma,
    sign_flip,
)

__all__ = [
    "ATTACKS",
    "GAUSSIAN_STD",
    "IPM_EPSILON",
    "IPM_EPSILON_LARGE",
    "IPM_EPSILON_SMALL",
    "MINMAX_PERTURBATIONS",
    "POOLED_ATTACKS",
    "SIGN_FLIP_SCALE",
    "ColludingAttackers",
    "alie",
    "alie_z",
    "flip_labels",
    "gaussian",
    "ipm",
    "minmax",
    "minmax_gamma",
    "sign_flip",
]

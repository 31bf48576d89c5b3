"""User-level central differential privacy (DP-FedAvg, McMahan et al. 2018, DESIGN §6): the broker sees
each worker's update, clips it to L2 norm C, sums, adds N(0, (sigma C)^2) per coordinate and divides by
the *planned* cohort size (under Poisson client sampling, the expected one, q times the clients: the
paper's fixed-denominator estimator), so the released mean depends neither on how many workers answered
nor on their sample counts (a sample-count weight would let one worker's influence exceed C), and one
worker moves it by at most C / planned.

The release is accounted by :class:`~federated.privacy.ledger.PrivacyLedger`; with adaptive clipping,
the norms seen move the clip for the next round through a noised count of their own
(:class:`~federated.privacy.clipping.AdaptiveClipper`, accounted in sigma).
"""

from __future__ import annotations

import numpy as np

from federated.privacy.clipping import AdaptiveClipper, clip_vector
from federated.privacy.noise import noise_rng

__all__ = ["central_mean"]


def central_mean(updates: np.ndarray, *, clip: float, sigma: float, planned: float,
                 clipper: AdaptiveClipper | None = None) -> np.ndarray:
    """The released mean (float32) of ``updates``, one flat update per row (n, d), each clipped to
    ``clip``; Gaussian noise of std ``sigma * clip`` on the sum (drawn from :func:`noise_rng`); divided
    by ``planned`` (a whole cohort size, or the expected size of a Poisson sample; ``updates`` may have no
    rows: the noise alone is released). With a ``clipper``, its clip moves for the next round from these
    update norms.

    Raises ValueError for a bad ``clip``, a non-finite update, a negative ``sigma`` or ``planned`` <= 0.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if not planned > 0:
        raise ValueError(f"the planned cohort must be positive, got {planned!r}")
    total = np.zeros(updates.shape[1], np.float64)
    norms = []
    for row in updates:
        clipped, norm = clip_vector(row, clip)
        norms.append(norm)
        total += clipped
    total += noise_rng().normal(0.0, sigma * clip, size=total.shape)
    if clipper is not None:  # the next round's clip, from a noised count (accounted)
        clipper.update(norms, expected_clients=planned)
    return (total / planned).astype(np.float32)

"""The broker's privacy ledger: what each round releases, the accountant that tracks it, and the budget.

One round is one accounted event, charged when the round *starts* (before any TASK leaves the broker),
because from then on the workers release updates whether or not the round completes; a round that
fails, or that was under way when the broker died and runs again after a restart, is charged each time.
No amplification is claimed that the system does not provide:

- ``record`` mode: each selected worker runs ``local_epochs * round(1/q)`` DP-SGD steps with Poisson
  sampling at rate ``q`` and noise multiplier ``sigma``; a round is ``PoissonSampled(q, Gaussian(sigma))``
  composed that many times. Every round is charged in full, as if every worker took part in all of them
  (a worker cannot tell whether it will be selected, and the broker does not promise to skip it).
- ``central`` mode: user-level DP-FedAvg; the broker adds Gaussian noise of std ``sigma * clip`` to the sum
  of updates each clipped to ``clip``, so one worker's whole contribution has sensitivity ``clip``. With a
  fixed-size cohort (selection random, performance, adaptive: not Poisson) a round is charged as
  ``Gaussian(sigma)`` with q = 1: no amplification by sampling is claimed. With ``selection: poisson`` each
  worker joins a round independently with probability q (``client_sampling_rate``, drawn from the OS
  CSPRNG) and the noised sum is divided by the *expected* cohort ``q * num_clients``, never by the realised
  count (which would depend on who took part), so a round is DP-FedAvg's (McMahan et al. 2018, Algorithm 1
  with the fixed-denominator estimator) and is charged as ``PoissonSampled(q, Gaussian(sigma))``:
  amplification by sampling. That guarantee holds against whoever sees only the released models; it
  needs the sample to be secret, so it does not hold against the broker, which chooses the sample (it is
  trusted in central mode anyway), nor against anyone who reads the round store, which lists each round's
  participants. Every round started under Poisson central DP releases, whatever the sample's size (an
  empty sample releases noise alone): skipping or failing a round for a small sample would reveal
  something about its size, which the analysis does not cover. With adaptive clipping (Andrew et al. 2021) the broker also
  releases the count of unclipped updates with Gaussian noise of std ``sigma_b = max(cohort / 20, sigma)``
  and noises the update with ``sigma_update = (sigma^-2 - (2 sigma_b)^-2)^(-1/2)``; by the paper's
  Theorem 1 the pair is a Gaussian mechanism with noise multiplier ``sigma``, which is what is charged.
- ``distributed`` mode: each worker adds a Skellam share (``Poisson(mu) - Poisson(mu)`` per coordinate, in
  the fixed-point domain at scale ``2^frac_bits``) to its clipped, encoded update before masking, with
  ``mu`` sized so that the shares of the smallest sum the broker can have unmasked alone reach std
  ``sigma * clip * scale`` (:func:`smallest_revealed_sum`: secure aggregation unmasks any sum of at least
  the threshold ``t`` survivors, whatever ``min_clients`` says, so that is ``min(t, min_clients)`` over every
  cohort size a round can start with; more survivors only add noise margin). A round is
  charged with the Skellam RDP bound of Agarwal, Kairouz and Liu (2021) (see
  :func:`~federated.privacy.skellam.skellam_rdp`) at the worst-case L1/L2 sensitivities of one worker's
  rounded encoding, composed over rounds and converted with dp-accounting's RDP-to-DP conversion; no
  amplification. ``frac_bits`` is the largest whose sum, noise tail included, cannot wrap mod 2^32 except
  with probability 1e-9 over the whole run, and whose per-worker ``mu`` is at most
  :data:`~federated.privacy.noise.POISSON_EXACT_MAX` (1e10), so that each side of a share is one exact
  Poisson draw (at the largest scale ``mu`` reaches ~1e14, where NumPy's sampler is no longer Poisson;
  ``skellam_share`` splits such a mean, but at a cost of ``mu / 1e10`` passes). The coarser scale costs
  little: it enters the sensitivity only through the rounding term ``sqrt(dim)`` next to ``clip * 2^f``
  (``sigma * clip * 2^f`` stays above ~1.4e5, so a few parts in 10^4 at dim 4,810). What this protects:
  the content of one worker's update; the broker still sees who took part. With ``selection: poisson``
  the cohort is a Poisson sample, but the broker draws it and sees it, so against the broker there is no
  amplification and the round is charged in full as before. Against those who see only the models an
  amplified figure would hold, but dp-accounting has no Poisson-subsampled Skellam mechanism, and no
  epsilon is reported that the library (or the Skellam bound above) did not compute; so the one epsilon
  reported is the unamplified one, which holds against everyone, the broker included. A Poisson sample
  too small for secure aggregation (fewer than ``max(min_clients, 3)``) is not run: no TASK leaves, nothing
  is released and nothing is charged; the broker, who alone learns of it, knows the sample anyway.

Adjacency, said plainly. ``record``: add or remove one training example of one worker (dp-accounting's
Poisson-subsampled Gaussian). ``central``: add or remove one worker's update (the mean is divided by the
planned cohort size, so the count does not enter the release). ``distributed``: zero-out, i.e. one worker's
update against the zero update, the worker taking part either way: the charged sensitivities are those of
one encoding, and the weight coordinate (1 for every worker, not noised) is the same on both sides, so it
needs no noise. For replace-one adjacency (one worker's update swapped for another) double both
sensitivities. In every mode the sample counts are treated as public: workers announce them in HELLO, the
broker records the cohort and its size, and epsilon covers the contents of the data, not how much of it
there is.

Epsilons are computed for the configured delta by :class:`~federated.privacy.accountant.PrivacyAccountant`
(dp-accounting), or for ``distributed`` by the Skellam bound; the budget is ``privacy_budget`` at that delta.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from federated.config import FederatedConfig
from federated.crypto.errors import ParameterError
from federated.crypto.fixedpoint import MAX_FRAC_BITS
from federated.privacy.accountant import PrivacyAccountant, calibrate_sigma
from federated.privacy.clipping import AdaptiveClipper, update_noise_multiplier
from federated.privacy.noise import POISSON_EXACT_MAX
from federated.privacy.skellam import (
    check_no_wrap_with_noise,
    plan_skellam,
    skellam_epsilon,
    skellam_sensitivities,
)

__all__ = ["PrivacyLedger", "dpsgd_steps", "smallest_revealed_sum"]

log = logging.getLogger("federated.privacy")


def dpsgd_steps(epochs: int, q: float) -> int:
    """DP-SGD steps of one local fit: ``epochs * round(1/q)`` (what the trainer runs and is charged)."""
    return epochs * max(1, round(1.0 / q))


def smallest_revealed_sum(config: FederatedConfig) -> int:
    """The fewest workers' inputs in a sum that the broker of this run can see unmasked: what distributed
    DP's noise must be sized for.

    A secure round unmasks the sum of its survivors as soon as ``t`` (the round's Shamir threshold) of
    them sent masked inputs, and the workers refuse fewer; ``min_clients`` is checked by the broker only
    after it has the sum, so it protects nothing against the broker. A round starts with a cohort of
    ``max(min_clients, 3)`` to ``clients_per_round`` workers, and ``t`` is planned per cohort
    (:meth:`~federated.config.SecureConfig.round_params`), so this is the smallest ``t`` over those cohort
    sizes, and never more than ``min_clients`` (sizing for ``min_clients`` when it is below ``t`` only adds
    noise). Without secure aggregation: ``min_clients``.
    """
    floor = config.min_clients
    if not config.secure.enabled:
        return floor
    thresholds = []
    for cohort in range(max(config.min_clients, 3), config.clients_per_round + 1):
        try:
            thresholds.append(config.secure.round_params(cohort, vector_length=1).threshold)
        except ValueError:  # a cohort size these settings cannot run (e.g. an odd degree below n - 1)
            continue
    return min([floor, *thresholds])


class PrivacyLedger:
    """Per-run privacy state of a broker with ``config.privacy.mode`` record, central or distributed.

    ``dim`` is the number of model parameters (the distributed mode's sensitivity and wrap check need it).
    Raises ValueError if calibration cannot meet the budget or no fixed-point scale fits the noise.
    """

    def __init__(self, config: FederatedConfig, dim: int = 1) -> None:
        p = config.privacy
        if p.mode not in ("record", "central", "distributed"):
            raise ValueError(f"no privacy ledger for mode {p.mode!r}")
        self.dim = dim
        #: Workers per round, and the fewest whose noise shares must already reach the accounted noise.
        self.planned, self.min_survivors = config.clients_per_round, smallest_revealed_sum(config)
        #: Poisson client sampling's rate (None: a fixed-size cohort), and the mean cohort size: central
        #: DP divides by it (``q * num_clients`` under Poisson, ``clients_per_round`` otherwise).
        self.client_rate = config.client_sampling_rate if config.selection == "poisson" else None
        self.expected_cohort = config.expected_cohort
        self.failure_prob = 1e-9 / config.num_rounds  # of a wrap, per secure sum
        self.mode: str = p.mode
        self.clip = p.clip
        self.delta = p.delta
        self.budget = config.privacy_budget
        if self.mode == "record":
            self.q, self.steps = p.sampling_rate, dpsgd_steps(config.training.local_epochs, p.sampling_rate)
        elif self.amplified:
            assert self.client_rate is not None
            self.q, self.steps = self.client_rate, 1
        else:
            self.q, self.steps = 1.0, 1
        self.accountant = PrivacyAccountant(p.accountant)
        self.rounds_charged = 0
        # Epsilon after k charged rounds, by k: every round is the same event, and the broker asks for the
        # next round's epsilon before charging it, so each figure is computed once (0.1-0.5 s each).
        self._epsilon_after: dict[int, float] = {}
        self.calibrated = p.noise_multiplier is None
        if p.noise_multiplier is None and self.mode == "distributed":
            assert self.budget is not None
            self.sigma = self._calibrate_skellam(self.budget, config.num_rounds)
        elif p.noise_multiplier is None:
            assert self.budget is not None  # FederatedConfig refuses neither
            self.sigma = calibrate_sigma(self.budget, self.q, self.steps * config.num_rounds, self.delta,
                                         p.accountant)
            log.info("noise multiplier %.4g calibrated so %d rounds fit epsilon %.4g at delta %g (%s)",
                     self.sigma, config.num_rounds, self.budget, self.delta, p.accountant)
        else:
            self.sigma = p.noise_multiplier
        #: Central mode with adaptive clipping: the clip follower, and the noise multiplier of the update.
        self.clipper: AdaptiveClipper | None = None
        self.update_sigma = self.sigma
        if p.adaptive_clip and self.sigma > 0:
            sigma_b = max(self.expected_cohort / 20.0, self.sigma)
            self.clipper = AdaptiveClipper(p.clip, target_quantile=p.clip_quantile,
                                           learning_rate=p.clip_learning_rate, count_noise_std=sigma_b)
            self.update_sigma = update_noise_multiplier(self.sigma, sigma_b)
        #: Distributed mode: the fixed-point scale 2^frac_bits and each worker's Skellam ``mu``.
        self.frac_bits, self.skellam_mu = 0, 0.0
        if self.mode == "distributed":
            self.frac_bits = self._skellam_frac_bits(self.sigma)
            self.skellam_mu = self._plan(self.sigma, self.frac_bits).mu_per_worker
        # Import dp-accounting (SciPy, 1-2 s) and check the first round now, at start-up: inside the
        # broker's loop it would stall heartbeats, and the workers would take the broker for dead.
        self.next_round_epsilon()

    @property
    def amplified(self) -> bool:
        """Whether rounds are charged with amplification by (Poisson) client sampling: central DP with
        selection poisson only."""
        return self.mode == "central" and self.client_rate is not None

    @property
    def guarantee(self) -> str:
        """What the reported epsilon protects and against whom, in one line."""
        if self.mode == "record":
            return ("record-level: one training example of a worker, against everyone (the broker included); "
                    "every round charged in full, no amplification by client sampling")
        if self.mode == "distributed":
            return ("user-level: one worker's update, against everyone (the broker included); no amplification "
                    "by sampling (the broker chooses and sees each cohort)")
        if self.amplified:
            return (f"user-level, amplified by Poisson client sampling at q={self.q:g}: one worker's data, "
                    "against those who see only the released models; not against the trusted broker or "
                    "readers of the round store, who see who took part")
        return ("user-level: one worker's data, against everyone but the trusted broker; fixed-size cohort, "
                "charged with q = 1 (no amplification)")

    # -- distributed (Skellam) mode --------------------------------------------------------------

    def _plan(self, sigma: float, frac_bits: int) -> Any:
        return plan_skellam(sigma, self.clip, 2.0**frac_bits, self.planned, self.min_survivors)

    def _skellam_frac_bits(self, sigma: float) -> int:
        """The largest fixed-point scale whose sum of ``planned`` clipped updates plus all their noise
        cannot wrap (except with ``failure_prob``) and whose per-worker ``mu`` is one exact Poisson draw
        (at most ``POISSON_EXACT_MAX``; at scale 2^0 any ``mu`` is taken, and split by the sampler).
        Raises ValueError if none can."""
        for frac_bits in range(MAX_FRAC_BITS, -1, -1):
            if frac_bits > 0 and self._plan(sigma, frac_bits).mu_per_worker > POISSON_EXACT_MAX:
                continue
            try:
                check_no_wrap_with_noise(self.planned, self.clip, 1, frac_bits, self._plan(sigma, frac_bits).mu_max,
                                         self.dim, self.failure_prob)
            except ParameterError:
                continue
            return frac_bits
        raise ValueError(f"no fixed-point scale fits {self.planned} updates of norm {self.clip} with noise "
                         f"multiplier {sigma:g} in 32 bits; lower privacy.clip or the noise")

    def _skellam_epsilon(self, sigma: float, rounds: int) -> float:
        frac_bits = self._skellam_frac_bits(sigma)
        scale = 2.0**frac_bits
        l1, l2 = skellam_sensitivities(self.clip, scale, self.dim, weight_coordinate=False)
        return skellam_epsilon(l1, l2, self._plan(sigma, frac_bits).mu_guaranteed, rounds, self.delta)

    def _calibrate_skellam(self, budget: float, rounds: int) -> float:
        """The smallest sigma (to 0.1%) whose ``rounds`` Skellam releases fit ``budget``."""
        hi = 1.0
        while self._skellam_epsilon(hi, rounds) > budget:
            hi *= 2.0
            if hi > 1e6:
                raise ValueError(f"no noise multiplier up to 1e6 fits epsilon {budget:g} over {rounds} rounds")
        lo = 0.0
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2.0
            if mid > 0 and self._skellam_epsilon(mid, rounds) <= budget:
                hi = mid
            else:
                lo = mid
        return hi

    # -- every mode ----------------------------------------------------------------------------------

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first round)."""
        if self.rounds_charged == 0:
            return 0.0
        if self.rounds_charged not in self._epsilon_after:
            self._epsilon_after[self.rounds_charged] = (
                self._skellam_epsilon(self.sigma, self.rounds_charged) if self.mode == "distributed"
                else self.accountant.epsilon(self.delta))
        return self._epsilon_after[self.rounds_charged]

    def next_round_epsilon(self) -> float:
        """The epsilon spent once the next round is charged (inf when sigma is 0: no privacy at all)."""
        if self.sigma == 0:
            return math.inf
        k = self.rounds_charged + 1
        if k not in self._epsilon_after:
            self._epsilon_after[k] = (
                self._skellam_epsilon(self.sigma, k) if self.mode == "distributed"
                else self.accountant.would_spend(self.q, self.sigma, self.steps, self.delta))
        return self._epsilon_after[k]

    def allows_next_round(self) -> bool:
        """False if the next round would spend past the budget (always True without a budget)."""
        return self.budget is None or self.next_round_epsilon() <= self.budget

    def charge_round(self) -> float:
        """Charge one round's release; return the epsilon spent including it."""
        if self.sigma == 0:
            raise ValueError("noise multiplier 0 gives no differential privacy; nothing can be accounted")
        if self.mode != "distributed":
            self.accountant.record(self.q, self.sigma, self.steps)
        self.rounds_charged += 1
        return self.epsilon()

    @property
    def current_clip(self) -> float:
        """The clip in force this round (it moves each round with adaptive clipping)."""
        return self.clipper.clip if self.clipper is not None else self.clip

    def train_settings(self) -> dict[str, float]:
        """What record mode adds to the TASK's train section (the trainer's DP-SGD settings)."""
        if self.mode != "record":
            return {}
        return {"dp_clip": self.clip, "dp_noise_multiplier": self.sigma, "dp_sampling_rate": self.q}

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: mode, sigma, whether it was calibrated, epsilon spent, delta, budget, the
        Poisson client-sampling rate (None: a fixed-size cohort), whether rounds are charged with
        amplification by sampling, and what the epsilon protects against whom (``guarantee``)."""
        return {"mode": self.mode, "noise_multiplier": self.sigma, "calibrated": self.calibrated,
                "clip": self.current_clip,
                "epsilon": self.epsilon(), "delta": self.delta, "budget": self.budget,
                "accountant": "skellam-rdp" if self.mode == "distributed" else self.accountant.kind,
                "rounds_charged": self.rounds_charged,
                "client_sampling_rate": self.client_rate,
                "amplified": self.amplified, "guarantee": self.guarantee}

    def to_dict(self) -> dict[str, Any]:
        """The state a resumed broker continues from (the accountant's events and the sigma in force)."""
        return {"sigma": self.sigma, "rounds_charged": self.rounds_charged, "accountant": self.accountant.to_dict()}

    def load(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`to_dict`'s output. Raises ValueError if it is malformed or was made for
        another noise multiplier (a resumed run must keep the noise it was calibrated for)."""
        try:
            sigma = float(state["sigma"])
            rounds = int(state["rounds_charged"])
            accountant = PrivacyAccountant.from_dict(state["accountant"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"privacy state is malformed: {exc!r}") from exc
        if accountant.kind != self.accountant.kind:
            raise ValueError(f"privacy state uses the {accountant.kind} accountant, not {self.accountant.kind}")
        if not math.isclose(sigma, self.sigma, rel_tol=1e-9) and not self.calibrated:
            raise ValueError(f"privacy state was recorded with noise multiplier {sigma}, not {self.sigma}")
        self.sigma, self.accountant, self.rounds_charged = sigma, accountant, rounds
        self._epsilon_after.clear()
        if self.mode == "distributed":
            self.frac_bits = self._skellam_frac_bits(sigma)
            self.skellam_mu = self._plan(sigma, self.frac_bits).mu_per_worker

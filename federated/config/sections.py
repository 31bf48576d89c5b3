"""The run's sections other than training, one frozen dataclass each: the broker, aggregation, secure
aggregation and differential privacy. Each ``validate()`` checks its own fields; what needs two sections
is checked by :class:`~federated.config.FederatedConfig`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from federated.aggregation.robust import RULES as AGGREGATION_RULES
from federated.aggregation.server_opt import SERVER_OPTIMIZERS
from federated.config.checks import number, positive_int
from federated.config.errors import ConfigError

if TYPE_CHECKING:
    from federated.crypto.params import SecAggParams

__all__ = [
    "ACCOUNTANTS",
    "AGGREGATION_RULES",
    "PRIVACY_MODES",
    "SERVER_OPTIMIZER_NAMES",
    "AggregationConfig",
    "BrokerConfig",
    "EvaluationConfig",
    "PrivacyConfig",
    "SecureConfig",
]

# The names of the aggregation rules (AGGREGATION_RULES) and server optimizers are their owners':
# federated.aggregation's rule registry and server optimizer module. Config only checks a name against them.
#: Server optimizers, in the order :data:`federated.aggregation.SERVER_OPTIMIZERS` lists them.
SERVER_OPTIMIZER_NAMES = tuple(SERVER_OPTIMIZERS)


@dataclass(frozen=True)
class BrokerConfig:
    """How the broker listens, times rounds, keeps liveness and steps the global model. Times in seconds.

    ``server_optimizer``: fedavg | fedavgm | fedadagrad | fedadam | fedyogi (Reddi et al. 2021);
    ``server_learning_rate`` None takes the optimizer's default (1.0 for fedavg/fedavgm, 0.1 for fedadagrad,
    0.1 fedadam/fedyogi); ``server_beta1``/``server_beta2``/``server_tau`` as in the paper.
    ``keys_dir``: the broker's keys directory (``fl keys broker``); set, the broker speaks CurveZMQ and admits
    only the workers enrolled there (``fl keys enrol``). None: plain TCP, any worker may join.
    """

    bind: str = "tcp://127.0.0.1:8080"
    store: str = "runs/latest/store.db"
    round_timeout_s: float = 60.0
    start_timeout_s: float = 30.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    max_failed_rounds: int = 3
    server_optimizer: str = "fedavg"
    server_learning_rate: float | None = None
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    keys_dir: str | None = None

    def validate(self, prefix: str = "broker") -> None:
        for name in ("bind", "store"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{prefix}.{name}", f"must be a string, got {getattr(self, name)!r}")
        if self.keys_dir is not None and not (isinstance(self.keys_dir, str) and self.keys_dir):
            raise ConfigError(f"{prefix}.keys_dir", f"must be a directory path or null, got {self.keys_dir!r}")
        if not re.fullmatch(r"(tcp://[^\s]+:\d+|ipc://[^\s]+|inproc://[^\s]+)", self.bind):
            raise ConfigError(f"{prefix}.bind", f"must look like tcp://HOST:PORT, got {self.bind!r}")
        if not self.store:
            raise ConfigError(f"{prefix}.store", "must be a file path")
        number(f"{prefix}.round_timeout_s", self.round_timeout_s, 0.0, 7 * 86400, open_lo=True)
        number(f"{prefix}.start_timeout_s", self.start_timeout_s, 0.0, 7 * 86400)
        number(f"{prefix}.heartbeat_interval_s", self.heartbeat_interval_s, 0.0, 3600, open_lo=True)
        number(f"{prefix}.heartbeat_timeout_s", self.heartbeat_timeout_s, 0.0, 86400, open_lo=True)
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError(f"{prefix}.heartbeat_timeout_s",
                              "must be larger than heartbeat_interval_s (several intervals, e.g. 5x)")
        positive_int(f"{prefix}.max_failed_rounds", self.max_failed_rounds)
        if self.server_optimizer not in SERVER_OPTIMIZER_NAMES:
            raise ConfigError(f"{prefix}.server_optimizer",
                              f"{self.server_optimizer!r} is not one of {', '.join(SERVER_OPTIMIZER_NAMES)}")
        if self.server_learning_rate is not None:
            number(f"{prefix}.server_learning_rate", self.server_learning_rate, 0.0, 100.0, open_lo=True)
        number(f"{prefix}.server_beta1", self.server_beta1, 0.0, 0.999)
        number(f"{prefix}.server_beta2", self.server_beta2, 0.0, 0.9999)
        number(f"{prefix}.server_tau", self.server_tau, 0.0, 10.0, open_lo=True)


@dataclass(frozen=True)
class EvaluationConfig:
    """Federated evaluation: workers score the global model on their own held-out split (``test.npz``, or
    ``--holdout``) and the broker records the weighted loss and accuracy per round.

    ``every``: evaluate the model of every ``every``-th complete round, and always the final one (0: never).
    The scores of a round's model travel in the next round's answers (workers score the model a TASK
    brings before training on it), so evaluation costs no extra round trip; the final model is scored in
    one closing evaluation-only round. ``fraction``: the share of each cohort asked to evaluate (at least
    one worker). Under secure aggregation the scores travel inside the masked sums, so the broker learns
    only their weighted sums; under distributed DP they are not collected, since un-noised they would
    leak what the noise protects.
    """

    every: int = 1
    fraction: float = 1.0

    def validate(self, prefix: str = "evaluation") -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or not 0 <= self.every <= 1_000_000:
            raise ConfigError(f"{prefix}.every", f"must be an integer >= 0 (0: no federated evaluation), "
                                                 f"got {self.every!r}")
        number(f"{prefix}.fraction", self.fraction, 0.0, 1.0, open_lo=True)


@dataclass(frozen=True)
class AggregationConfig:
    """How the broker combines updates. ``rule`` "mean" is weighted FedAvg; the others are robust rules
    that tolerate Byzantine workers and need individual updates (or buckets, under secure aggregation).

    ``byzantine_fraction``: the share of a cohort the rule must tolerate (f = floor(fraction * n));
    ``trim_ratio``: trimmed mean's cut per side; ``bucket_size``: with it, updates (or, under
    ``--secure``, securely summed groups) are first averaged in random buckets of this many workers
    (Karimireddy et al. 2022) and the rule runs across bucket means; ``clip_tau``: centered clipping's
    radius; ``norm_bound``: norm bounding's L2 bound; ``detect``: score every worker each plain round
    and record the suspects; ``detect_threshold``: score above which a worker is suspected, a standard-normal
    quantile (an honest worker exceeds it with probability 1 - Phi(threshold) per round: 2.3e-4 at 3.5;
    federated.aggregation.detection).
    """

    rule: str = "mean"
    byzantine_fraction: float = 0.2
    trim_ratio: float = 0.1
    bucket_size: int | None = None
    clip_tau: float = 10.0
    norm_bound: float = 10.0
    detect: bool = True
    detect_threshold: float = 3.5

    def validate(self, prefix: str = "aggregation") -> None:
        if not isinstance(self.rule, str) or self.rule not in AGGREGATION_RULES:
            raise ConfigError(f"{prefix}.rule", f"{self.rule!r} is not one of {', '.join(AGGREGATION_RULES)}")
        number(f"{prefix}.byzantine_fraction", self.byzantine_fraction, 0.0, 0.49)
        number(f"{prefix}.trim_ratio", self.trim_ratio, 0.0, 0.49)
        if self.bucket_size is not None:
            positive_int(f"{prefix}.bucket_size", self.bucket_size)
        number(f"{prefix}.clip_tau", self.clip_tau, 0.0, 1e9, open_lo=True)
        number(f"{prefix}.norm_bound", self.norm_bound, 0.0, 1e9, open_lo=True)
        if not isinstance(self.detect, bool):
            raise ConfigError(f"{prefix}.detect", f"must be true or false, got {self.detect!r}")
        number(f"{prefix}.detect_threshold", self.detect_threshold, 0.0, 1e6, open_lo=True)

    @property
    def needs_individual_updates(self) -> bool:
        return self.rule != "mean"


@dataclass(frozen=True)
class SecureConfig:
    """Secure aggregation (DESIGN §5): the broker learns only the sum of the surviving updates.

    ``threshold`` (t): shares needed to rebuild a worker's secrets; a broker colluding with fewer than t
    of a worker's neighbours learns nothing about it. ``None``: a majority of the neighbours.
    ``neighbors`` (k): degree of the SecAgg+ neighbour graph; ``None``: the complete graph up to 30
    workers, about 3 log2(n) beyond. ``clip``: L2 bound applied to each update before encoding.
    ``weight_cap``: a worker's FedAvg weight is ``min(num_samples, weight_cap)``. ``frac_bits``: the
    fixed-point scale 2^frac_bits; ``None``: the largest that cannot wrap. ``stage_timeout_s``: how long
    each key-exchange/unmasking stage waits (the masked-input stage waits ``broker.round_timeout_s``).
    """

    enabled: bool = False
    threshold: int | None = None
    neighbors: int | None = None
    clip: float = 100.0
    weight_cap: int = 1024
    frac_bits: int | None = None
    stage_timeout_s: float = 30.0

    def validate(self, cohort: int, prefix: str = "secure", ring_bits: int = 32) -> None:
        """Raise ConfigError naming the first bad field; ``ring_bits`` 16 checks the settings for the
        16-bit sums of quantized compression."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{prefix}.enabled", f"must be true or false, got {self.enabled!r}")
        number(f"{prefix}.clip", self.clip, 0.0, 1e9, open_lo=True)
        positive_int(f"{prefix}.weight_cap", self.weight_cap)
        number(f"{prefix}.stage_timeout_s", self.stage_timeout_s, 0.0, 86400, open_lo=True)
        for name in ("threshold", "neighbors", "frac_bits"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{prefix}.{name}", f"must be a non-negative integer or null, got {value!r}")
        if not self.enabled:
            return
        if cohort < 3:
            raise ConfigError("clients_per_round", f"secure aggregation needs at least 3 workers per round "
                                                   f"(with 2, each learns the other's update), got {cohort}")
        try:
            self.round_params(cohort, vector_length=1, ring_bits=ring_bits)
        except ValueError as exc:  # ParameterError is a ValueError
            raise ConfigError(prefix, str(exc)) from None

    def round_params(self, cohort: int, vector_length: int, n_max: int | None = None,
                     ring_bits: int = 32) -> SecAggParams:
        """The :class:`~federated.crypto.params.SecAggParams` for a round of ``cohort`` workers, whose
        fixed-point scale is safe for sums of up to ``n_max`` inputs (default: ``cohort``) in
        Z_2^ring_bits.

        With ``ring_bits`` 16 (quantized compression) every worker's weight is 1 and each worker's grid
        must have at least 255 levels over [-clip, clip] (8 bits' worth).

        Raises ParameterError (a ValueError) if the settings cannot work for that cohort: a threshold
        larger than the neighbours or not more than half of them, an odd degree below n - 1, a fixed-point scale whose sum could wrap,
        or a 16-bit grid coarser than 8 bits.
        """
        from federated.crypto.errors import ParameterError
        from federated.crypto.fixedpoint import max_frac_bits
        from federated.crypto.graph import default_degree, default_threshold
        from federated.crypto.params import SecAggParams

        degree = min(self.neighbors if self.neighbors is not None else default_degree(cohort), cohort - 1)
        if degree < cohort - 1 and degree % 2:
            raise ValueError(f"neighbors must be even below the complete graph ({cohort - 1}), got {degree}")
        threshold = self.threshold if self.threshold is not None else default_threshold(degree)
        if not degree // 2 < threshold <= degree:
            # Workers refuse 2t <= k (federated.crypto.floor.SafetyFloor): below a majority, a cheating
            # broker could rebuild both of a worker's secrets. Refused here, so the run never starts.
            raise ValueError(f"threshold must be in [{degree // 2 + 1}, {degree}] (more than half of the "
                             f"{degree} neighbours per worker, which workers require), got {threshold}")
        n_max = max(n_max or cohort, cohort)
        # 16 bits leave no room for sample counts: a weight of 1024 alone would take 10 of them.
        weight_cap = 1 if ring_bits == 16 else self.weight_cap
        frac_bits = (self.frac_bits if self.frac_bits is not None
                     else max_frac_bits(n_max, self.clip, weight_cap, ring_bits))
        params = SecAggParams(threshold, degree, float(self.clip), weight_cap, frac_bits, n_max, vector_length,
                              ring_bits)
        params.validate()
        if ring_bits == 16 and self.clip * 2**frac_bits < 127:
            raise ParameterError(
                f"16-bit sums of {n_max} inputs leave each worker {self.clip * 2**frac_bits:.4g} levels per "
                f"sign over [-clip, clip] (clip={self.clip}, frac_bits={frac_bits}), fewer than 8-bit "
                f"quantization's 127; use fewer workers per round (or smaller buckets) or no quantization")
        return params


#: Differential-privacy modes (DESIGN §6); see :class:`PrivacyConfig`.
PRIVACY_MODES = ("none", "record", "central", "distributed")
#: Privacy accountants of dp-accounting.
ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy (DESIGN §6). Every epsilon the product reports comes from the accountant.

    ``mode``:
      - ``none``: no differential privacy;
      - ``record``: record-level DP-SGD in every worker (Poisson-sampled batches at ``sampling_rate``,
        per-example clipping to ``clip``, Gaussian noise ``noise_multiplier * clip`` per step); epsilon
        protects one training example of a worker;
      - ``central``: user-level DP-FedAvg with a trusted broker: the broker clips every update to L2 norm
        ``clip``, sums them, adds Gaussian noise of std ``noise_multiplier * clip`` and divides by the
        planned cohort size; epsilon protects a worker's whole data set;
      - ``distributed``: user-level DP under secure aggregation, without trusting the broker: each worker
        clips its update to ``clip`` and adds its share of discrete Skellam noise in the fixed-point domain
        before masking, sized so that the shares of the smallest sum secure aggregation can reveal
        (``min(threshold, min_clients)`` survivors) reach std ``noise_multiplier * clip`` (Agarwal et
        al. 2021). The broker learns only the noised sum.
      ``None`` (the default): ``central`` when ``privacy_budget`` is set, else ``none``.
    ``noise_multiplier`` None: calibrated with the accountant so that ``num_rounds`` rounds fit
    ``privacy_budget``. ``delta``: the delta of every (epsilon, delta) reported. ``accountant``: rdp | pld.
    ``sampling_rate``: record mode's Poisson rate q (each local step sees each example with probability q;
    a round runs ``local_epochs * round(1/q)`` steps).
    ``adaptive_clip`` (central mode): the clip follows the ``clip_quantile`` of update norms (Andrew et al.
    2021, geometric rule with learning rate ``clip_learning_rate``), starting from ``clip``; the count of
    unclipped updates is itself noised and accounted.
    """

    mode: str | None = None
    clip: float = 1.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    sampling_rate: float = 0.1
    adaptive_clip: bool = False
    clip_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    def validate(self, prefix: str = "privacy") -> None:
        if self.mode is not None and self.mode not in PRIVACY_MODES:
            raise ConfigError(f"{prefix}.mode", f"{self.mode!r} is not one of {', '.join(PRIVACY_MODES)}")
        number(f"{prefix}.clip", self.clip, 0.0, 1e9, open_lo=True)
        if self.noise_multiplier is not None:
            number(f"{prefix}.noise_multiplier", self.noise_multiplier, 0.0, 1e6)
        number(f"{prefix}.delta", self.delta, 0.0, 0.1, open_lo=True)
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"{prefix}.accountant", f"{self.accountant!r} is not one of {', '.join(ACCOUNTANTS)}")
        number(f"{prefix}.sampling_rate", self.sampling_rate, 0.0, 1.0, open_lo=True)
        if not isinstance(self.adaptive_clip, bool):
            raise ConfigError(f"{prefix}.adaptive_clip", f"must be true or false, got {self.adaptive_clip!r}")
        number(f"{prefix}.clip_quantile", self.clip_quantile, 0.0, 1.0)
        number(f"{prefix}.clip_learning_rate", self.clip_learning_rate, 0.0, 10.0)
        if self.adaptive_clip and self.mode not in (None, "central"):
            raise ConfigError(f"{prefix}.adaptive_clip", "adaptive clipping is built for central DP only "
                                                         f"(the broker sees the update norms), not {self.mode!r}")

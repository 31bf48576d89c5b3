"""Configuration: frozen dataclasses, YAML loading, and validation errors that name the field.

Precedence (DESIGN §8): the defaults below (mirrored, with comments, in ``configs/default.yaml``), then a
YAML file given with ``--config``, then command-line flags. YAML is read with ``yaml.safe_load``; unknown
keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

import yaml

if TYPE_CHECKING:
    from federated.crypto.params import SecAggParams

__all__ = [
    "ACCOUNTANTS",
    "AGGREGATION_RULES",
    "OPTIMIZERS",
    "PRIVACY_MODES",
    "SELECTIONS",
    "SERVER_OPTIMIZER_NAMES",
    "AggregationConfig",
    "BrokerConfig",
    "ClientConfig",
    "ConfigError",
    "FederatedConfig",
    "PrivacyConfig",
    "SecureConfig",
    "TrainingConfig",
    "load_config",
    "merge",
]

OPTIMIZERS = ("sgd", "adam")
#: Server optimizers (kept equal to ``federated.aggregation.SERVER_OPTIMIZERS`` by a test).
SERVER_OPTIMIZER_NAMES = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
SELECTIONS = ("random", "performance", "adaptive")


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` is its dotted name; the message lists allowed values."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (YAML allows any number of digits)
        return False


def _number(name: str, value: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> None:
    ok = _finite_number(value)
    if not ok or value > hi or value < lo or (open_lo and value == lo):
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise ConfigError(name, f"must be a number in {bound}, got {value!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Local training that the broker asks of every worker (sent in each TASK)."""

    local_epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0

    def validate(self, prefix: str = "training") -> None:
        _positive_int(f"{prefix}.local_epochs", self.local_epochs)
        _positive_int(f"{prefix}.batch_size", self.batch_size)
        _number(f"{prefix}.learning_rate", self.learning_rate, 0.0, 10.0, open_lo=True)
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{prefix}.optimizer", f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        _number(f"{prefix}.momentum", self.momentum, 0.0, 0.999)
        _number(f"{prefix}.proximal_mu", self.proximal_mu, 0.0, 1e6)

    def to_task_config(self) -> dict[str, Any]:
        """The training section of a TASK message (keys of ``federated.worker.trainer.TrainConfig``)."""
        return {"epochs": self.local_epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "optimizer": self.optimizer,
                "momentum": self.momentum, "proximal_mu": self.proximal_mu}


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
        _number(f"{prefix}.round_timeout_s", self.round_timeout_s, 0.0, 7 * 86400, open_lo=True)
        _number(f"{prefix}.start_timeout_s", self.start_timeout_s, 0.0, 7 * 86400)
        _number(f"{prefix}.heartbeat_interval_s", self.heartbeat_interval_s, 0.0, 3600, open_lo=True)
        _number(f"{prefix}.heartbeat_timeout_s", self.heartbeat_timeout_s, 0.0, 86400, open_lo=True)
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError(f"{prefix}.heartbeat_timeout_s",
                              "must be larger than heartbeat_interval_s (several intervals, e.g. 5x)")
        _positive_int(f"{prefix}.max_failed_rounds", self.max_failed_rounds)
        if self.server_optimizer not in SERVER_OPTIMIZER_NAMES:
            raise ConfigError(f"{prefix}.server_optimizer",
                              f"{self.server_optimizer!r} is not one of {', '.join(SERVER_OPTIMIZER_NAMES)}")
        if self.server_learning_rate is not None:
            _number(f"{prefix}.server_learning_rate", self.server_learning_rate, 0.0, 100.0, open_lo=True)
        _number(f"{prefix}.server_beta1", self.server_beta1, 0.0, 0.999)
        _number(f"{prefix}.server_beta2", self.server_beta2, 0.0, 0.9999)
        _number(f"{prefix}.server_tau", self.server_tau, 0.0, 10.0, open_lo=True)


#: Aggregation rules (kept equal to ``federated.aggregation.RULES`` by a test).
AGGREGATION_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
                     "centered_clipping", "norm_bounding")


@dataclass(frozen=True)
class AggregationConfig:
    """How the broker combines updates. ``rule`` "mean" is weighted FedAvg; the others are robust rules
    that tolerate Byzantine workers and need individual updates (or buckets, under secure aggregation).

    ``byzantine_fraction``: the share of a cohort the rule must tolerate (f = floor(fraction * n));
    ``trim_ratio``: trimmed mean's cut per side; ``bucket_size``: with it, updates (or, under
    ``--secure``, securely summed groups) are first averaged in random buckets of this many workers
    (Karimireddy et al. 2022) and the rule runs across bucket means; ``clip_tau``: centered clipping's
    radius; ``norm_bound``: norm bounding's L2 bound; ``detect``: score every worker each plain round
    and record the suspects; ``detect_threshold``: robust z-score above which a worker is suspected.
    """

    rule: str = "mean"
    byzantine_fraction: float = 0.2
    trim_ratio: float = 0.1
    bucket_size: int | None = None
    clip_tau: float = 10.0
    norm_bound: float = 10.0
    detect: bool = True
    detect_threshold: float = 3.0

    def validate(self, prefix: str = "aggregation") -> None:
        if not isinstance(self.rule, str) or self.rule not in AGGREGATION_RULES:
            raise ConfigError(f"{prefix}.rule", f"{self.rule!r} is not one of {', '.join(AGGREGATION_RULES)}")
        _number(f"{prefix}.byzantine_fraction", self.byzantine_fraction, 0.0, 0.49)
        _number(f"{prefix}.trim_ratio", self.trim_ratio, 0.0, 0.49)
        if self.bucket_size is not None:
            _positive_int(f"{prefix}.bucket_size", self.bucket_size)
        _number(f"{prefix}.clip_tau", self.clip_tau, 0.0, 1e9, open_lo=True)
        _number(f"{prefix}.norm_bound", self.norm_bound, 0.0, 1e9, open_lo=True)
        if not isinstance(self.detect, bool):
            raise ConfigError(f"{prefix}.detect", f"must be true or false, got {self.detect!r}")
        _number(f"{prefix}.detect_threshold", self.detect_threshold, 0.0, 1e6, open_lo=True)

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
        _number(f"{prefix}.clip", self.clip, 0.0, 1e9, open_lo=True)
        _positive_int(f"{prefix}.weight_cap", self.weight_cap)
        _number(f"{prefix}.stage_timeout_s", self.stage_timeout_s, 0.0, 86400, open_lo=True)
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
        larger than the neighbours, an odd degree below n - 1, a fixed-point scale whose sum could wrap,
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
        if not 1 <= threshold <= degree:
            raise ValueError(f"threshold must be in [1, {degree}] (the neighbours per worker), got {threshold}")
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
        _number(f"{prefix}.clip", self.clip, 0.0, 1e9, open_lo=True)
        if self.noise_multiplier is not None:
            _number(f"{prefix}.noise_multiplier", self.noise_multiplier, 0.0, 1e6)
        _number(f"{prefix}.delta", self.delta, 0.0, 0.1, open_lo=True)
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"{prefix}.accountant", f"{self.accountant!r} is not one of {', '.join(ACCOUNTANTS)}")
        _number(f"{prefix}.sampling_rate", self.sampling_rate, 0.0, 1.0, open_lo=True)
        if not isinstance(self.adaptive_clip, bool):
            raise ConfigError(f"{prefix}.adaptive_clip", f"must be true or false, got {self.adaptive_clip!r}")
        _number(f"{prefix}.clip_quantile", self.clip_quantile, 0.0, 1.0)
        _number(f"{prefix}.clip_learning_rate", self.clip_learning_rate, 0.0, 10.0)
        if self.adaptive_clip and self.mode not in (None, "central"):
            raise ConfigError(f"{prefix}.adaptive_clip", "adaptive clipping is built for central DP only "
                                                         f"(the broker sees the update norms), not {self.mode!r}")


@dataclass(frozen=True)
class FederatedConfig:
    """A whole federated run: who takes part, what is trained, and how the broker runs it.

    ``clients_per_round`` left unset (``None``) means every client; ``min_clients``, the fewest updates a
    round may aggregate (with fewer the round fails, model unchanged), left unset means
    ``min(2, clients_per_round)``. Both are resolved at construction; ``to_dict()`` writes them back as
    ``None`` so that a later override of ``num_clients`` re-resolves them.
    ``privacy_budget`` is the total epsilon allowed at ``privacy.delta`` (``None``: no budget): the broker
    does not start a round whose release would exceed it.
    """

    num_clients: int = 10
    clients_per_round: int = None  # type: ignore[assignment]  # resolved in __post_init__
    num_rounds: int = 20
    min_clients: int = None  # type: ignore[assignment]  # resolved in __post_init__
    seed: int = 0
    dataset: str = "digits"
    partition: str = "iid"
    model: str = "mlp"
    selection: str = "random"
    privacy_budget: float | None = None
    compression: str = "none"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        auto = set()
        if isinstance(self.privacy, PrivacyConfig) and self.privacy.mode is None:
            auto.add("privacy.mode")
            mode = "central" if self.privacy_budget is not None else "none"
            object.__setattr__(self, "privacy", dataclasses.replace(self.privacy, mode=mode))
        if self.clients_per_round is None:
            auto.add("clients_per_round")
            object.__setattr__(self, "clients_per_round", self.num_clients)
        if self.min_clients is None and isinstance(self.clients_per_round, int):
            auto.add("min_clients")
            object.__setattr__(self, "min_clients", min(2, self.clients_per_round))
        object.__setattr__(self, "_auto", frozenset(auto))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field and its allowed values."""
        _positive_int("num_clients", self.num_clients)
        _positive_int("clients_per_round", self.clients_per_round)
        _positive_int("num_rounds", self.num_rounds)
        _positive_int("min_clients", self.min_clients)
        if self.clients_per_round > self.num_clients:
            raise ConfigError("clients_per_round", f"must be <= num_clients ({self.num_clients}), "
                                                   f"got {self.clients_per_round}")
        if self.min_clients > self.clients_per_round:
            raise ConfigError("min_clients", f"must be <= clients_per_round ({self.clients_per_round}), "
                                             f"got {self.min_clients}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be an integer in [0, 2**32), got {self.seed!r}")
        for name in ("dataset", "partition", "model", "selection"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be a string, got {getattr(self, name)!r}")
        if not (self.dataset in ("digits", "synthetic") or self.dataset.startswith("npz:")):
            raise ConfigError("dataset", f"{self.dataset!r} is not one of digits, synthetic, npz:DIR")
        if not re.fullmatch(r"iid|dirichlet:\d*\.?\d+(e-?\d+)?", self.partition) or \
                self.partition.startswith("dirichlet:") and float(self.partition[10:]) <= 0:
            raise ConfigError("partition", f"{self.partition!r} is not one of iid, dirichlet:ALPHA (ALPHA > 0)")
        if not (self.model in ("mlp", "cnn") or re.fullmatch(r"[\w.]+:\w+", self.model)):
            raise ConfigError("model", f"{self.model!r} is not one of mlp, cnn, MODULE:FACTORY")
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"{self.selection!r} is not one of {', '.join(SELECTIONS)}")
        if self.privacy_budget is not None:
            _number("privacy_budget", self.privacy_budget, 0.0, 1e6, open_lo=True)
        for name, cls in (("training", TrainingConfig), ("broker", BrokerConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"must be a {cls.__name__} (a mapping of its settings in YAML), "
                                        f"got {type(getattr(self, name)).__name__}")
        self.training.validate()
        self.broker.validate()
        if not isinstance(self.secure, SecureConfig):
            raise ConfigError("secure", "must be a mapping of secure-aggregation settings")
        if not isinstance(self.aggregation, AggregationConfig):
            raise ConfigError("aggregation", "must be a mapping of aggregation settings")
        self.aggregation.validate()
        self._validate_privacy()
        agg = self.aggregation
        if self.secure.enabled and agg.needs_individual_updates and agg.bucket_size is None:
            raise ConfigError("aggregation.rule", (
                f"{agg.rule!r} needs each worker's update, which secure aggregation hides from the broker; "
                f"use the bucketed mode (aggregation.bucket_size / --buckets S): the broker securely sums "
                f"random buckets of S workers and applies {agg.rule!r} across the bucket means"))
        self._validate_compression()
        ring_bits = self.secure_plan().ring_bits if self.secure.enabled else 32
        if self.secure.enabled and agg.bucket_size is not None:
            if agg.bucket_size < 3:
                raise ConfigError("aggregation.bucket_size", f"secure buckets need at least 3 workers (with 2, each "
                                                             f"learns the other's update), got {agg.bucket_size}")
            # A bucket holds s to 2s - 1 workers (a remainder joins the last full bucket).
            self.secure.validate(min(2 * agg.bucket_size - 1, self.clients_per_round), ring_bits=ring_bits)
        else:
            self.secure.validate(self.clients_per_round, ring_bits=ring_bits)

    def _validate_privacy(self) -> None:
        if not isinstance(self.privacy, PrivacyConfig):
            raise ConfigError("privacy", "must be a mapping of differential-privacy settings")
        p = self.privacy
        p.validate()
        if p.mode == "none":
            if self.privacy_budget is not None:
                raise ConfigError("privacy.mode", "privacy_budget needs a differential-privacy mode: "
                                                  "record, central or distributed")
            return
        if p.noise_multiplier is None and self.privacy_budget is None:
            raise ConfigError("privacy.noise_multiplier", "set it, or set privacy_budget to have it calibrated")
        if p.mode == "distributed":
            if not self.secure.enabled:
                raise ConfigError("privacy.mode", "distributed DP adds the noise inside secure aggregation; "
                                                  "turn it on (secure.enabled / --secure) or use central DP")
            if self.aggregation.needs_individual_updates or self.aggregation.bucket_size is not None:
                raise ConfigError("privacy.mode", "distributed DP covers the plain secure sum; use "
                                                  "aggregation.rule mean without buckets")
            if self.compression != "none":
                raise ConfigError("compression", "distributed DP is accounted for the full update; use "
                                                 "compression none with privacy.mode distributed")
        if p.mode == "central":
            if self.secure.enabled:
                raise ConfigError("privacy.mode", (
                    "central DP needs a trusted broker that sees each update to clip it; under secure "
                    "aggregation use privacy.mode distributed (the workers add the noise before masking) "
                    "or record"))
            if self.aggregation.needs_individual_updates or self.aggregation.bucket_size is not None:
                raise ConfigError("privacy.mode", (
                    f"central DP's sensitivity analysis covers the clipped mean, not {self.aggregation.rule!r} "
                    "or buckets; use aggregation.rule mean"))
            if self.compression != "none":
                raise ConfigError("compression", (
                    "central DP clips what the broker receives; a lossy codec would change each update "
                    "after the worker clipped it. Use compression none with privacy.mode central"))

    def _validate_compression(self) -> None:
        if not isinstance(self.compression, str):
            raise ConfigError("compression", f"must be a codec spec string, got {self.compression!r}")
        if self.compression == "none":
            return
        from federated.compression import make_codec

        try:
            make_codec(self.compression)
        except ValueError as exc:
            raise ConfigError("compression", str(exc)) from None
        if self.secure.enabled:
            try:
                self.secure_plan()
            except ValueError as exc:
                raise ConfigError("compression", str(exc)) from None

    def secure_plan(self) -> Any:
        """What ``compression`` becomes under secure aggregation (a
        :class:`~federated.compression.secure.SecurePlan`). Raises ValueError if it cannot run there."""
        from federated.compression.secure import secure_plan

        return secure_plan(self.compression)

    def to_dict(self, *, resolved: bool = False) -> dict[str, Any]:
        """Plain nested dict. Defaults resolved at construction are ``None`` unless ``resolved``
        (the form to store or show: every value as it is in force)."""
        data = dataclasses.asdict(self)
        if not resolved:
            for name in getattr(self, "_auto", ()):
                section, _, leaf = name.rpartition(".")
                (data[section] if section else data)[leaf] = None
        return data


@dataclass(frozen=True)
class ClientConfig:
    """One worker's own settings (seed README API).

    ``local_epochs`` and ``learning_rate`` are used by :class:`federated.client.FederatedClient` when it
    trains on its own; in a federated run the broker's TASK carries the training configuration, so that
    every worker in a round trains alike.
    """

    client_id: str = "client_0"
    server_address: str = "127.0.0.1:8080"
    data_path: str | None = None
    local_epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 16
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0
    model: str = "mlp"

    def __post_init__(self) -> None:
        if not (isinstance(self.client_id, str) and re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", self.client_id)):
            raise ConfigError("client_id", f"must be 1-128 characters of letters, digits and _.:@-, "
                                           f"got {self.client_id!r}")
        address = self.server_address
        if not (isinstance(address, str) and re.fullmatch(r"[^\s:/]+:\d{1,5}", address)):
            raise ConfigError("server_address", f"must be HOST:PORT, got {self.server_address!r}")
        self.training().validate("client")

    def training(self) -> TrainingConfig:
        """This client's training settings as a :class:`TrainingConfig`."""
        return TrainingConfig(self.local_epochs, self.batch_size, self.learning_rate, self.optimizer,
                              self.momentum, self.proximal_mu)


_T = TypeVar("_T")


def _from_mapping(cls: type[_T], data: dict[str, Any], prefix: str) -> _T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; unknown keys are errors."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(name, f"unknown setting; allowed: {', '.join(sorted(known))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(name, "must be a mapping")
            value = _from_mapping(hint, value, f"{name}.")  # type: ignore[arg-type]
        elif hint is float and isinstance(value, int) and _finite_number(value):
            value = float(value)  # (_finite_number excludes bools and ints too large for a float)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong type reached a comparison inside validate()
        raise ConfigError(prefix.rstrip(".") or "config", str(exc)) from None


def merge(config: FederatedConfig, overrides: dict[str, Any]) -> FederatedConfig:
    """Return ``config`` with dotted-key ``overrides`` applied (``{"training.learning_rate": 0.1}``).

    ``None`` values are skipped (an unset command-line flag). Raises ConfigError for unknown keys or
    invalid results.
    """
    data = config.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *path, leaf = key.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node.get(part), dict):
                name = ".".join(path[:depth + 1])
                if part in node:
                    raise ConfigError(name, "is a setting, not a section")
                raise ConfigError(name, f"unknown setting; allowed: {', '.join(sorted(node))}")
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            value = _deep(node[leaf], value)  # a partial section changes only the keys it names
        node[leaf] = value
    return _from_mapping(FederatedConfig, data, "")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FederatedConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated.

    Raises ConfigError (bad or unknown field, unreadable file, invalid YAML).
    """
    config = FederatedConfig()
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{path} is not UTF-8 text: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
        if raw is not None:
            if not isinstance(raw, dict):
                raise ConfigError("--config", f"{path} must contain a mapping of settings")
            config = _from_mapping(FederatedConfig, {**config.to_dict(), **_deep(config.to_dict(), raw)}, "")
    return merge(config, overrides or {})


def _deep(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (nested sections in a YAML file override key by key)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _deep(base[key], value)
        else:
            out[key] = value
    return out



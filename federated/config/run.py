"""A whole run (:class:`FederatedConfig`): its top-level settings, its sections, and the checks that
need more than one section (secure aggregation with a robust rule, a DP mode with compression, ...)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from federated.config.checks import number, positive_int
from federated.config.errors import ConfigError
from federated.config.sections import (
    AggregationConfig,
    BrokerConfig,
    EvaluationConfig,
    PrivacyConfig,
    SecureConfig,
)
from federated.config.training import TrainingConfig
from federated.data import DataError, check_dataset_spec, parse_partition

__all__ = ["BUILTIN_MODELS", "SELECTIONS", "FederatedConfig"]

SELECTIONS = ("random", "performance", "adaptive", "poisson")
#: The built-in model specs (federated.models builds them; naming them here keeps MLX out of the config).
BUILTIN_MODELS = ("mlp", "cnn", "cnn1d", "logistic")


@dataclass(frozen=True)
class FederatedConfig:
    """A whole federated run: who takes part, what is trained, and how the broker runs it.

    ``clients_per_round`` left unset (``None``) means every client; ``min_clients``, the fewest updates a
    round may aggregate (with fewer the round fails, model unchanged), left unset means
    ``min(2, clients_per_round)``. Both are resolved at construction; ``to_dict()`` writes them back as
    ``None`` so that a later override of ``num_clients`` re-resolves them.
    ``privacy_budget`` is the total epsilon allowed at ``privacy.delta`` (``None``: no budget): the broker
    does not start a round whose release would exceed it.
    ``selection`` "poisson" draws each round's cohort by Poisson sampling: every live worker joins
    independently with probability ``client_sampling_rate`` (q), from the OS CSPRNG, so the cohort's size
    is random with mean ``q * num_clients`` and ``clients_per_round`` is every client (the largest cohort
    possible). Under central DP this is DP-FedAvg's sampling (McMahan et al. 2018) and is accounted with
    amplification by sampling (:mod:`federated.privacy.ledger`).
    ``input_shape`` (per-example shape, e.g. ``[24]`` or ``[8, 8, 1]``) and ``num_classes`` describe the
    model without data: set, a broker builds the model from them and needs no data set of its own; unset,
    they are read from ``dataset``.
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
    client_sampling_rate: float | None = None
    privacy_budget: float | None = None
    compression: str = "none"
    input_shape: list[int] | None = None
    num_classes: int | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

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
        positive_int("num_clients", self.num_clients)
        positive_int("clients_per_round", self.clients_per_round)
        positive_int("num_rounds", self.num_rounds)
        positive_int("min_clients", self.min_clients)
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
        # The data module owns the spec grammars (one home): the config accepts exactly what it loads.
        for name, check in (("dataset", check_dataset_spec), ("partition", parse_partition)):
            try:
                check(getattr(self, name))
            except DataError as exc:
                raise ConfigError(name, str(exc)) from None
        if not (self.model in BUILTIN_MODELS or re.fullmatch(r"[\w.]+:\w+", self.model)):
            raise ConfigError("model", f"{self.model!r} is not one of {', '.join(BUILTIN_MODELS)}, MODULE:FACTORY")
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"{self.selection!r} is not one of {', '.join(SELECTIONS)}")
        self._validate_sampling()
        if self.privacy_budget is not None:
            number("privacy_budget", self.privacy_budget, 0.0, 1e6, open_lo=True)
        self._validate_model_description()
        if not isinstance(self.evaluation, EvaluationConfig):
            raise ConfigError("evaluation", "must be a mapping of federated-evaluation settings")
        self.evaluation.validate()
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

    def _validate_model_description(self) -> None:
        shape, classes = self.input_shape, self.num_classes
        if shape is not None:
            if isinstance(shape, tuple):
                object.__setattr__(self, "input_shape", shape := list(shape))
            if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1_000_000 for d in shape)):
                raise ConfigError("input_shape", f"must be a list of 1 to 4 positive integers (e.g. [24] or "
                                                 f"[8, 8, 1]), got {shape!r}")
        if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool)
                                    or not 2 <= classes <= 100_000):
            raise ConfigError("num_classes", f"must be an integer in [2, 100000], got {classes!r}")
        if (shape is None) != (classes is None):
            missing = "num_classes" if classes is None else "input_shape"
            raise ConfigError(missing, "input_shape and num_classes describe the model together; set both")

    def _validate_sampling(self) -> None:
        if self.selection != "poisson":
            if self.client_sampling_rate is not None:
                raise ConfigError("client_sampling_rate", (
                    f"is the Poisson rate of selection poisson; with selection {self.selection!r} leave it unset "
                    f"(null), or choose selection poisson"))
            return
        if self.client_sampling_rate is None:
            raise ConfigError("client_sampling_rate", "selection poisson needs it: a number in (0, 1], the "
                                                      "probability that each client joins a round")
        number("client_sampling_rate", self.client_sampling_rate, 0.0, 1.0, open_lo=True)
        if self.clients_per_round != self.num_clients:
            raise ConfigError("clients_per_round", (
                f"with selection poisson every client may be drawn, so the largest cohort is num_clients "
                f"({self.num_clients}); the expected cohort is client_sampling_rate x num_clients. Leave "
                f"clients_per_round unset, got {self.clients_per_round}"))

    @property
    def expected_cohort(self) -> float:
        """The mean size of a round's cohort: ``client_sampling_rate * num_clients`` under Poisson
        sampling, ``clients_per_round`` otherwise. Central DP divides the noised sum by it."""
        if self.selection == "poisson" and self.client_sampling_rate is not None:
            return self.client_sampling_rate * self.num_clients
        return float(self.clients_per_round)

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

    @property
    def federated_evaluation(self) -> bool:
        """Whether the broker asks workers to score global models (off under distributed DP: see
        :class:`~federated.config.sections.EvaluationConfig`)."""
        return self.evaluation.every > 0 and self.privacy.mode != "distributed"

    def to_dict(self, *, resolved: bool = False) -> dict[str, Any]:
        """Plain nested dict. Defaults resolved at construction are ``None`` unless ``resolved``
        (the form to store or show: every value as it is in force)."""
        data = dataclasses.asdict(self)
        if not resolved:
            for name in getattr(self, "_auto", ()):
                section, _, leaf = name.rpartition(".")
                (data[section] if section else data)[leaf] = None
        return data

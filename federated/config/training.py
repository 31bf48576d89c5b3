"""The training settings: one schema for the run's config, the TASK and the trainer.

A worker trains with the ``train`` object of each TASK; the broker writes it from the run's ``training``
section (:meth:`TrainingConfig.to_task_config`), adding record-level DP-SGD's settings from the privacy
ledger. Both ends check the same names and bounds, written once in :data:`TRAINING_SCHEMA`: the broker
refuses at start-up a config its workers would refuse, and a worker still checks every TASK, which comes
from the network (:meth:`TrainConfig.from_dict`), and every fit (:meth:`TrainConfig.validate`).

Why here: the schema belongs to the lowest module that both ends may import. ``federated.config`` is below
``broker``, ``worker`` and ``cli`` (it imports none of them) and both sides already import it, so the
worker's trainer parses a TASK with :class:`TrainConfig` from this module. ``protocol`` is lower still,
but a TASK's settings are an opaque JSON object to the wire format, and this module needs config's
:class:`ConfigError`, which names the field and the allowed values as every other setting does.

Defaults are not part of the schema: each use has its own. The run's are in ``configs/default.yaml``;
:class:`~federated.config.ClientConfig`'s are the seed README's; :class:`TrainConfig`'s (one epoch, no
momentum) are what a TASK that leaves a setting out gets, and the quick fit of a test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

from federated.config.checks import Bound
from federated.config.errors import ConfigError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "TASK_KEYS",
    "TRAINING_SCHEMA",
    "TrainConfig",
    "TrainingConfig",
]

#: Local optimizers a worker runs.
OPTIMIZERS = ("sgd", "adam")
#: Bounds on the work one TASK may ask of a worker; beyond them a config is refused, not obeyed.
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65536

#: Every setting of a fit, by its name in a TASK's ``train`` object (and on :class:`TrainConfig`), with the
#: values it may take. The one place these bounds are written.
TRAINING_SCHEMA: Mapping[str, Bound] = MappingProxyType({
    "epochs": Bound(int, 1, MAX_EPOCHS),
    "batch_size": Bound(int, 1, MAX_BATCH_SIZE),
    "learning_rate": Bound(float, 0.0, 10.0, open_lo=True),
    "optimizer": Bound(str, choices=OPTIMIZERS),
    # A momentum of 1 never forgets a gradient; anything below it is a valid heavy-ball SGD.
    "momentum": Bound(float, 0.0, 1.0, open_hi=True),
    "proximal_mu": Bound(float, 0.0, 1e6),
    # DP-SGD's settings share privacy's bounds (PrivacyConfig: clip <= 1e9, noise multiplier <= 1e6, the
    # largest the accountant calibrates); 0 has a meaning of its own here.
    "dp_clip": Bound(float, 0.0, 1e9, note="0 = DP-SGD off"),
    "dp_noise_multiplier": Bound(float, 0.0, 1e6),
    "dp_sampling_rate": Bound(float, 0.0, 1.0, note="0 = batch_size / N"),
})

#: The run config's ``training`` section: each key's name in a TASK. The DP-SGD settings are not in it: the
#: broker's privacy ledger adds them in record-level DP, from the ``privacy`` section.
TASK_KEYS: Mapping[str, str] = MappingProxyType({
    "local_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "proximal_mu": "proximal_mu",
})


@dataclass(frozen=True)
class TrainingConfig:
    """Local training that the broker asks of every worker (sent in each TASK). Bounds:
    :data:`TRAINING_SCHEMA` (``local_epochs`` is a TASK's ``epochs``)."""

    local_epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0

    def validate(self, prefix: str = "training") -> None:
        """Raise ConfigError naming the first field (``prefix.name``) outside its allowed values."""
        for name, key in TASK_KEYS.items():
            TRAINING_SCHEMA[key].check(f"{prefix}.{name}", getattr(self, name))

    def to_task_config(self) -> dict[str, Any]:
        """The training section of a TASK message (the keys of :class:`TrainConfig`)."""
        return {key: getattr(self, name) for name, key in TASK_KEYS.items()}

    def to_train_config(self) -> TrainConfig:
        """These settings as the trainer takes them (no DP-SGD)."""
        return TrainConfig(**self.to_task_config())


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one local fit: a TASK's ``train`` object, as the worker's trainer takes it.

    ``learning_rate`` is the step size; ``momentum`` applies to SGD only (Adam uses betas 0.9, 0.999 with
    bias correction); ``proximal_mu`` > 0 turns on FedProx's ``mu/2 * ||w - w_global||^2`` term.

    DP-SGD (off while ``dp_clip`` is 0): ``dp_clip`` is the per-example L2 clip C (model gradient units);
    ``dp_noise_multiplier`` sigma gives noise std ``sigma * C`` on each summed gradient (0 = clipping
    only, no privacy); ``dp_sampling_rate`` q is each example's Poisson inclusion probability (0 = use
    ``min(1, batch_size / N)``).
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    proximal_mu: float = 0.0
    dp_clip: float = 0.0
    dp_noise_multiplier: float = 0.0
    dp_sampling_rate: float = 0.0

    @property
    def dp_enabled(self) -> bool:
        """Whether fits run DP-SGD (``dp_clip > 0``)."""
        return self.dp_clip > 0

    def validate(self, prefix: str = "train") -> None:
        """Raise ConfigError (a ValueError) naming the first field (``prefix.name``) outside its allowed
        values."""
        for f in fields(self):
            TRAINING_SCHEMA[f.name].check(f"{prefix}.{f.name}", getattr(self, f.name))
        if self.dp_clip == 0 and (self.dp_noise_multiplier > 0 or self.dp_sampling_rate > 0):
            # A config that asks for noise but not for clipping would silently train without privacy.
            raise ConfigError(f"{prefix}.dp_clip", "dp_noise_multiplier and dp_sampling_rate need dp_clip > 0 "
                                                   "(DP-SGD is off while dp_clip is 0)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "train") -> TrainConfig:
        """Build and validate a config from a decoded message; missing keys take their defaults.

        Raises ConfigError (a ValueError) for a non-mapping, an unknown key, a value of the wrong type
        (bools are not numbers here) or a value outside its allowed range.
        """
        if not isinstance(data, Mapping):
            # ValueError, not TypeError, for every defect of a decoded message: callers catch one type.
            raise ConfigError(prefix, f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in TRAINING_SCHEMA)
        if unknown:
            raise ConfigError(prefix, f"unknown key(s) {unknown}; allowed: {sorted(TRAINING_SCHEMA)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            bound = TRAINING_SCHEMA[name]
            bound.check(f"{prefix}.{name}", value)
            values[name] = float(value) if bound.kind is float else value
        config = cls(**values)
        config.validate(prefix)
        return config

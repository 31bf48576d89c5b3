"""Configuration: frozen dataclasses by section, validation errors that name the field, YAML loading.

- :mod:`~federated.config.errors`: :class:`ConfigError` (the field's dotted name, the allowed values);
- :mod:`~federated.config.checks`: checks of single values shared by the sections;
- :mod:`~federated.config.training`: the training settings' one schema: the ``training`` section and a
  TASK's ``train`` object (:class:`TrainConfig`), which the worker's trainer parses with it;
- :mod:`~federated.config.sections`: the ``broker``, ``aggregation``, ``secure``, ``privacy`` and ``evaluation``
  sections;
- :mod:`~federated.config.run`: :class:`FederatedConfig`, a whole run, and the checks across sections;
- :mod:`~federated.config.client`: :class:`ClientConfig`, one worker's own settings;
- :mod:`~federated.config.loading`: defaults, then a YAML file (``yaml.safe_load``), then dotted overrides.

Layer: below ``broker``, ``worker`` and ``cli``, which build runs and workers from it; it imports none of
them.
"""

from __future__ import annotations

from federated.config.client import ClientConfig
from federated.config.errors import ConfigError
from federated.config.loading import load_config, merge
from federated.config.run import BUILTIN_MODELS, SELECTIONS, FederatedConfig
from federated.config.sections import (
    ACCOUNTANTS,
    AGGREGATION_RULES,
    PRIVACY_MODES,
    SERVER_OPTIMIZER_NAMES,
    AggregationConfig,
    BrokerConfig,
    EvaluationConfig,
    PrivacyConfig,
    SecureConfig,
)
from federated.config.training import OPTIMIZERS, TrainConfig, TrainingConfig

__all__ = [
    "ACCOUNTANTS",
    "AGGREGATION_RULES",
    "BUILTIN_MODELS",
    "OPTIMIZERS",
    "PRIVACY_MODES",
    "SELECTIONS",
    "SERVER_OPTIMIZER_NAMES",
    "AggregationConfig",
    "BrokerConfig",
    "ClientConfig",
    "ConfigError",
    "EvaluationConfig",
    "FederatedConfig",
    "PrivacyConfig",
    "SecureConfig",
    "TrainConfig",
    "TrainingConfig",
    "load_config",
    "merge",
]

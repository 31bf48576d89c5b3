"""Glue between the wire and the MLX trainer: builds models named in a TASK and runs local training.

A TASK's ``config`` carries ``model`` (spec, input shape, class count) and ``train`` (the trainer's
settings). Only built-in model specs (``mlp``, ``cnn``, ``cnn1d``, ``logistic``) are accepted from the network: a
``MODULE:FACTORY`` spec would make the worker import code the broker names, so it is honoured only when
the worker itself was started with that same spec.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from mlx import nn

from federated.config import BUILTIN_MODELS
from federated.crypto.floor import SafetyFloor
from federated.models import ModelError, build_model
from federated.worker.payload import distributed_noise_multiplier
from federated.worker.trainer import LocalTrainer, TrainConfig

__all__ = ["BUILTIN", "ModelRunner", "check_data_fits", "model_config"]

#: Model specs a worker builds when a broker names them: the built-in models, named once in the config.
BUILTIN = BUILTIN_MODELS


def _call_factory(spec: str) -> nn.Module:
    """Import ``MODULE:FACTORY`` and call it with no arguments (only for the worker's own trusted spec)."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        model = factory()
    except Exception as exc:
        raise ModelError(f"model factory {spec!r} failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {spec!r} returned {type(model).__name__}, not an mlx.nn.Module")
    return model


def model_config(spec: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The ``model`` section of a TASK config."""
    return {"spec": spec, "input_shape": list(input_shape), "num_classes": num_classes}


def check_data_fits(model: Mapping[str, Any], x: np.ndarray, y: np.ndarray, what: str = "training data") -> None:
    """Refuse data that a TASK's model description cannot take, before any of it reaches MLX: the feature
    count must be ``prod(input_shape)``, the labels whole numbers in ``0 .. num_classes - 1``. A
    description without a shape or class count (a user's own model) is checked by the trainer instead.
    Raises ValueError naming the problem and both sides' figures."""
    shape, classes, spec = model.get("input_shape"), model.get("num_classes"), model.get("spec")
    if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
        width = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim >= 2 else -1
        expected = int(np.prod(shape, dtype=np.int64))
        if width != expected:
            raise ValueError(f"this worker's {what} has {width} features per example; the task's model "
                             f"({spec}, input_shape {shape}) takes {expected}")
    if isinstance(classes, int) and not isinstance(classes, bool) and len(y):
        if y.dtype.kind not in "iu":
            raise ValueError(f"this worker's {what} has labels of dtype {y.dtype}; they must be integers "
                             f"0..{classes - 1}")
        low, top = int(y.min()), int(y.max())
        if low < 0 or top >= classes:
            raise ValueError(f"this worker's {what} has labels {low}..{top}; the task's model has {classes} "
                             f"classes (labels 0..{classes - 1})")


class ModelRunner:
    """Caches one :class:`LocalTrainer` per model description and trains/evaluates with it.

    ``trusted_spec`` is the model spec this process was started with (the only non-built-in spec it
    will build). ``model``, if given, is used for every task whatever its description says (the Python
    API's ``FederatedClient`` brings its own model); the task's weights must then fit it exactly.
    ``min_noise_multiplier`` > 0 makes this worker refuse any TASK that does not ask for record-level
    DP-SGD with at least that noise multiplier, or distributed DP whose noise gives at least that noise
    multiplier to the smallest sum secure aggregation may reveal (threshold survivors): a worker's own guarantee that its data is never trained on
    without the noise it agreed to, whatever the broker sends.
    Raises ``ValueError`` for a TASK whose model or training settings are not acceptable.
    """

    def __init__(self, trusted_spec: str | None = None, model: nn.Module | None = None,
                 min_noise_multiplier: float = 0.0) -> None:
        self.trusted_spec = trusted_spec
        self.min_noise_multiplier = min_noise_multiplier
        self._own = LocalTrainer(model) if model is not None else None
        self._trainers: dict[tuple[str, tuple[int, ...], int], LocalTrainer] = {}
        self._trainers_by_spec: dict[str, LocalTrainer] = {}

    def trainer(self, model: Mapping[str, Any]) -> LocalTrainer:
        """The trainer for a TASK's model description (built once, then reused)."""
        if self._own is not None:
            return self._own
        spec, shape, classes = model.get("spec"), model.get("input_shape"), model.get("num_classes")
        if not isinstance(spec, str) or (spec not in BUILTIN and spec != self.trusted_spec):
            raise ValueError(f"model {spec!r} is not built in ({', '.join(BUILTIN)}) and is not the "
                             f"model this worker was started with ({self.trusted_spec!r})")
        if shape is None and classes is None and spec not in BUILTIN:
            # A user model described only by its factory (Python API without evaluation data).
            if spec not in self._trainers_by_spec:
                self._trainers_by_spec[spec] = LocalTrainer(_call_factory(spec))
            return self._trainers_by_spec[spec]
        if not (isinstance(shape, list) and 1 <= len(shape) <= 4
                and all(isinstance(d, int) and 0 < d <= 1_000_000 for d in shape)):
            raise ValueError(f"model input_shape {shape!r} must be a list of 1-4 positive integers")
        if not isinstance(classes, int) or isinstance(classes, bool) or not 1 < classes <= 100_000:
            raise ValueError(f"model num_classes {classes!r} must be an integer in [2, 100000]")
        key = (spec, tuple(shape), classes)
        if key not in self._trainers:
            self._trainers[key] = LocalTrainer(build_model(spec, input_shape=key[1], num_classes=classes))
        return self._trainers[key]

    def fit(self, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: dict[str, Any],
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Train locally from ``weights``; return (update, metrics) for an UPDATE message."""
        model = config.get("model")
        train = config.get("train")
        if not isinstance(model, dict) or not isinstance(train, dict):
            raise TypeError("task config needs 'model' and 'train' sections")
        trainer = self.trainer(model)
        check_data_fits(model, x, y)
        cfg = TrainConfig.from_dict(train)
        if self.min_noise_multiplier > 0 and not (
                (cfg.dp_enabled and cfg.dp_noise_multiplier >= self.min_noise_multiplier)
                or distributed_noise_multiplier(config, SafetyFloor()) >= self.min_noise_multiplier):
            raise ValueError(f"this worker trains only with DP-SGD noise multiplier >= {self.min_noise_multiplier:g}; "
                             f"the task asks for {cfg.dp_noise_multiplier if cfg.dp_enabled else 'no DP-SGD'}")
        result = trainer.fit(weights, x, y, cfg, seed=seed)
        metrics = {"loss": result.loss, "accuracy": result.accuracy, "train_s": result.train_s}
        if cfg.dp_enabled:
            metrics.update(dp_steps=float(result.dp_steps), dp_sampling_rate=result.dp_sampling_rate)
        return result.update, metrics

    def evaluate(self, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                 config: dict[str, Any]) -> tuple[float, float]:
        """Federated evaluation: ``(mean loss, accuracy)`` of a TASK's global ``weights`` on this worker's
        held-out ``x, y``. Raises ValueError/TypeError for a TASK or data that does not fit."""
        model = config.get("model")
        if not isinstance(model, dict):
            raise TypeError("task config needs a 'model' section")
        trainer = self.trainer(model)
        check_data_fits(model, x, y, "evaluation data")
        return trainer.evaluate(weights, x, y)

    def evaluator(self, model: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
        """``evaluate(weights) -> (loss, accuracy)`` on held-out ``x, y`` (for the broker)."""
        trainer = self.trainer(model)

        def evaluate(weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
            return trainer.evaluate(dict(weights), x, y)

        return evaluate



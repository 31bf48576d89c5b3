"""A worker builds only the built-in models or the one it was started with, whatever a TASK names.

README: "Workers do not run code the broker names". A TASK carries a model spec; a ``MODULE:FACTORY``
spec would make the worker import and call code of the broker's choosing. :class:`ModelRunner` must
refuse it before importing or calling anything, on both of its paths (a model with an input shape, and a
factory described only by its name), and through :meth:`ModelRunner.fit`, which the worker loop calls.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np
import pytest

from federated.models import MLP, get_weights
from federated.worker.runner import ModelRunner, model_config

UNTRUSTED = "fl_test_untrusted_models"


class Spy:
    """A callable that records every call (and returns a real model, so a call would succeed)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> MLP:
        self.calls.append((args, kwargs))
        return MLP(4, 3)


@pytest.fixture
def os_system(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """``os.system`` replaced by a spy: if the worker ever called it, the test sees it (and runs nothing)."""
    spy = Spy()
    monkeypatch.setattr(os, "system", spy)
    return spy


@pytest.fixture
def foreign_factory(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """An importable module ``fl_test_untrusted_models`` whose ``factory`` is a spy."""
    spy = Spy()
    module = types.ModuleType(UNTRUSTED)
    module.factory = spy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, UNTRUSTED, module)
    return spy


def _descriptions(spec: str) -> list[dict[str, Any]]:
    """The two shapes a TASK's model section takes: with input shape and classes, and the name alone."""
    return [model_config(spec, (4,), 3), {"spec": spec}]


@pytest.mark.parametrize("spec", ["os:system", f"{UNTRUSTED}:factory", "subprocess:run", "builtins:eval"])
def test_a_task_naming_foreign_code_is_refused_and_nothing_is_called(
        spec: str, os_system: Spy, foreign_factory: Spy) -> None:
    runner = ModelRunner(trusted_spec=None)
    for description in _descriptions(spec):
        with pytest.raises(ValueError, match="is not built in"):
            runner.trainer(description)
    assert os_system.calls == [] and foreign_factory.calls == []


def test_only_the_workers_own_spec_is_built_not_another(os_system: Spy, foreign_factory: Spy) -> None:
    # Started with its own factory, the worker still refuses any other MODULE:FACTORY.
    runner = ModelRunner(trusted_spec=f"{UNTRUSTED}:factory")
    for description in _descriptions("os:system"):
        with pytest.raises(ValueError, match="is not built in"):
            runner.trainer(description)
    assert os_system.calls == [] and foreign_factory.calls == []
    # Positive control (the spies do see calls): the trusted spec itself is built.
    runner.trainer({"spec": f"{UNTRUSTED}:factory"})
    assert len(foreign_factory.calls) == 1 and os_system.calls == []


def test_fit_refuses_a_task_naming_os_system_before_training(os_system: Spy, foreign_factory: Spy) -> None:
    # The path the worker loop takes for every TASK: ModelRunner.fit(weights, x, y, task.config, seed).
    runner = ModelRunner(trusted_spec=None)
    weights = get_weights(MLP(4, 3))
    x = np.zeros((8, 4), np.float32)
    y = np.zeros(8, np.int64)
    for description in _descriptions("os:system"):
        config = {"model": description, "train": {"epochs": 1, "batch_size": 4}}
        with pytest.raises(ValueError, match="is not built in"):
            runner.fit(weights, x, y, config, seed=0)
    assert os_system.calls == [] and foreign_factory.calls == []
    # Built-ins still train.
    update, _ = runner.fit(weights, x, y, {"model": model_config("mlp", (4,), 3),
                                          "train": {"epochs": 1, "batch_size": 4}}, seed=0)
    assert set(update) == set(weights)


@pytest.mark.parametrize(("spec", "shape"), [("cnn1d", (40,)), ("logistic", (60,))])
def test_a_task_naming_a_builtin_benchmark_model_is_built_and_trained(spec: str, shape: tuple[int, ...]) -> None:
    from federated.models import build_model

    runner = ModelRunner(trusted_spec=None)
    weights = get_weights(build_model(spec, input_shape=shape, num_classes=10, seed=0))
    x = np.random.default_rng(0).normal(size=(8, shape[0])).astype(np.float32)
    y = np.arange(8, dtype=np.int64) % 10
    update, metrics = runner.fit(weights, x, y, {"model": model_config(spec, shape, 10),
                                                 "train": {"epochs": 1, "batch_size": 4}}, seed=0)
    assert set(update) == set(weights) and np.isfinite(metrics["loss"])

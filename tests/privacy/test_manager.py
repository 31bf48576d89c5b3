"""The seed README's DifferentialPrivacyManager façade."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from federated.privacy import DifferentialPrivacyManager, compute_epsilon


def _tree(scale: float) -> dict[str, object]:
    return {"linear": {"weight": mx.ones((2, 10)) * scale, "bias": mx.ones((2,)) * scale},
            "blocks": [{"w": mx.ones((3,)) * scale}]}


def _norm(tree: object) -> float:
    return math.sqrt(sum(float((v.astype(mx.float32) ** 2).sum()) for _, v in tree_flatten(tree)))


def test_clips_the_whole_tree_and_keeps_its_structure() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=0.0, max_grad_norm=1.0, delta=1e-5)
    grads = _tree(5.0)
    out = manager.add_noise_to_gradients(grads)
    assert [name for name, _ in tree_flatten(out)] == [name for name, _ in tree_flatten(grads)]
    assert isinstance(out["blocks"], list)
    assert _norm(out) == pytest.approx(1.0, rel=1e-5)
    factor = 1.0 / _norm(grads)
    np.testing.assert_allclose(np.array(out["linear"]["weight"]), 5.0 * factor, rtol=1e-5)
    small = manager.add_noise_to_gradients(_tree(0.01))  # below the bound: unchanged
    np.testing.assert_allclose(np.array(small["linear"]["bias"]), 0.01, rtol=1e-6)


def test_noise_has_std_sigma_times_clip() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=1.5, max_grad_norm=2.0)
    zeros = {"w": mx.zeros((200, 100)), "half": mx.zeros((10,), dtype=mx.float16)}
    out = manager.add_noise_to_gradients(zeros)
    assert out["half"].dtype == mx.float16 and out["w"].shape == (200, 100)
    assert float(np.std(np.array(out["w"]))) == pytest.approx(3.0, rel=0.03)
    again = manager.add_noise_to_gradients(zeros)
    assert not np.array_equal(np.array(out["w"]), np.array(again["w"]))


def test_privacy_spent_is_the_accountant_s() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    epsilon, delta = manager.compute_privacy_spent(num_iterations=1000, batch_size=32, dataset_size=10000)
    assert delta == 1e-5
    assert epsilon == compute_epsilon(32 / 10000, 1.0, 1000, 1e-5)
    assert 0.5 < epsilon < 1.5
    none = DifferentialPrivacyManager(noise_multiplier=0.0, max_grad_norm=1.0)
    assert none.compute_privacy_spent(10, 1, 10)[0] == math.inf


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
    ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"delta": 0.0}, "delta"),
    ({"accountant": "moments"}, "accountant"),
])
def test_rejects_bad_settings(kwargs: dict[str, object], problem: str) -> None:
    args: dict[str, object] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0} | kwargs
    with pytest.raises(ValueError, match=problem):
        DifferentialPrivacyManager(**args)  # type: ignore[arg-type]


def test_rejects_bad_runs_and_trees() -> None:
    manager = DifferentialPrivacyManager(1.0, 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        manager.compute_privacy_spent(10, 0, 100)
    with pytest.raises(ValueError, match="cannot exceed"):
        manager.compute_privacy_spent(10, 200, 100)
    with pytest.raises(ValueError, match="non-finite"):
        manager.add_noise_to_gradients({"w": mx.array([1.0, float("nan")])})

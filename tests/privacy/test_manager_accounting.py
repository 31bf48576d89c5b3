"""``DifferentialPrivacyManager`` accounts for what it did (issue 13, item 15).

The seed README's façade clips a whole gradient tree once and adds noise; its ``compute_privacy_spent``
then charged ``num_iterations`` DP-SGD steps at ``q = batch_size / dataset_size``, as if every step had
clipped each example and drawn its batch by Poisson sampling. For the seed snippet (sigma 1, 1,000 steps,
q = 0.0032) that printed epsilon 0.95; what a whole-tree release can claim is no amplification at all
(epsilon 655). Now a whole-tree release is charged at sampling rate 1 with a warning, and per-example
gradients (``per_example=True``) give a real DP-SGD step, charged at q.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from federated.privacy import DifferentialPrivacyManager, compute_epsilon

SEED_RUN = {"num_iterations": 1000, "batch_size": 32, "dataset_size": 10000}


def test_a_whole_tree_release_is_charged_without_amplification() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    manager.add_noise_to_gradients({"linear": {"weight": mx.ones((2, 10)), "bias": mx.ones((2,))}})
    with pytest.warns(UserWarning, match="sampling rate 1"):
        epsilon, delta = manager.compute_privacy_spent(**SEED_RUN)
    assert (epsilon, delta) == (compute_epsilon(1.0, 1.0, 1000, 1e-5), 1e-5)
    understated = compute_epsilon(32 / 10000, 1.0, 1000, 1e-5)  # what the old façade printed
    assert understated < 1.0 and epsilon > 600


def test_one_example_can_move_a_tree_clipped_once_by_twice_the_clip() -> None:
    # Why a batch gradient clipped once is no DP-SGD step: adding one example (b = -3a) to a batch {a}
    # flips the clipped sum from C a/|a| to -C a/|a|. That is why the façade never claims amplification
    # for such a release, and why its epsilon protects the tree as a unit, not an example in it.
    manager = DifferentialPrivacyManager(noise_multiplier=0.0, max_grad_norm=1.0)
    a = np.array([3.0, 4.0], np.float32)
    alone = np.array(manager.add_noise_to_gradients({"g": mx.array(a)})["g"])
    with_b = np.array(manager.add_noise_to_gradients({"g": mx.array(a - 3 * a)})["g"])
    assert np.linalg.norm(alone - with_b) == pytest.approx(2.0, rel=1e-6)
    per_example = DifferentialPrivacyManager(noise_multiplier=0.0, max_grad_norm=1.0)
    one = np.array(per_example.add_noise_to_gradients({"g": mx.array(a[None])}, per_example=True)["g"])
    two = np.array(per_example.add_noise_to_gradients({"g": mx.array(np.stack([a, -3 * a]))}, per_example=True)["g"])
    assert np.linalg.norm(one - two) == pytest.approx(1.0, rel=1e-6)  # per-example clipping: C


def test_per_example_gradients_are_clipped_each_summed_and_charged_as_dp_sgd() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=0.0, max_grad_norm=1.0)
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(5, 2, 3)) * 4, rng.normal(size=(5, 3)) * 0.01
    out = manager.add_noise_to_gradients({"w": mx.array(w.astype(np.float32)), "b": mx.array(b.astype(np.float32))},
                                         per_example=True)
    norms = np.sqrt((w.reshape(5, -1) ** 2).sum(1) + (b**2).sum(1))
    factors = np.minimum(1.0, 1.0 / norms)
    np.testing.assert_allclose(np.array(out["w"]), np.tensordot(factors, w, axes=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(out["b"]), np.tensordot(factors, b, axes=1), rtol=1e-5, atol=1e-6)
    assert out["w"].shape == (2, 3) and out["b"].shape == (3,)
    noisy = DifferentialPrivacyManager(noise_multiplier=1.0, max_grad_norm=1.0)
    noisy.add_noise_to_gradients({"w": mx.zeros((4, 300))}, per_example=True)
    epsilon, _ = noisy.compute_privacy_spent(**SEED_RUN)  # no warning: a DP-SGD step
    assert epsilon == compute_epsilon(32 / 10000, 1.0, 1000, 1e-5)


def test_noise_on_a_per_example_sum_has_std_sigma_times_clip() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=1.5, max_grad_norm=2.0)
    out = manager.add_noise_to_gradients({"w": mx.zeros((7, 200, 100))}, per_example=True)
    assert float(np.std(np.array(out["w"]))) == pytest.approx(3.0, rel=0.03)


def test_every_release_made_is_charged_and_one_tree_turns_off_amplification() -> None:
    manager = DifferentialPrivacyManager(noise_multiplier=1.0, max_grad_norm=1.0)
    for _ in range(5):
        manager.add_noise_to_gradients({"w": mx.ones((2, 3))}, per_example=True)
    # Asked about 2 iterations after 5 releases: 5 are charged.
    assert manager.compute_privacy_spent(2, 32, 10000)[0] == compute_epsilon(32 / 10000, 1.0, 5, 1e-5)
    manager.add_noise_to_gradients({"w": mx.ones((3,))})
    with pytest.warns(UserWarning, match="1 whole gradient tree"):
        assert manager.compute_privacy_spent(2, 32, 10000)[0] == compute_epsilon(1.0, 1.0, 6, 1e-5)
    assert (manager.example_steps, manager.tree_releases) == (5, 1)


@pytest.mark.parametrize("tree", [
    {"w": mx.ones((3, 2)), "b": mx.ones((4,))},  # different batch sizes
    {"w": mx.array(1.0)},  # a scalar has no batch axis
    {"w": mx.ones((0, 2))},  # an empty batch
])
def test_per_example_trees_need_one_batch_axis(tree: dict[str, mx.array]) -> None:
    manager = DifferentialPrivacyManager(1.0, 1.0)
    with pytest.raises(ValueError, match="leading batch axis"):
        manager.add_noise_to_gradients(tree, per_example=True)
    assert manager.example_steps == 0 and math.isfinite(manager.compute_privacy_spent(1, 1, 10)[0])

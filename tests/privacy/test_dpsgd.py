"""DP-SGD in MLX: per-example gradients (vmap), clipping, noise, masks and overflow chunks, sampling."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx import nn
from mlx.utils import tree_flatten

from federated.data import Dataset, load_dataset
from federated.models import build_model, get_weights, set_weights
from federated.privacy.dpsgd import (
    DpSgdStep,
    clip_per_example,
    clipped_per_example_gradients,
    per_example_gradients,
    poisson_batch_rows,
    poisson_sample,
    private_gradient,
    supports_vmap,
)
from federated.worker.trainer import LocalTrainer, TrainConfig


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)[0]


def _mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=seed)


def _loop_gradients(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The oracle: one mx.grad per example, in a Python loop."""
    out = []
    for i in range(len(y)):
        def loss(xb: mx.array, yb: mx.array) -> mx.array:
            return nn.losses.cross_entropy(model(xb), yb, reduction="sum")

        _, grads = nn.value_and_grad(model, loss)(mx.array(x[i : i + 1]), mx.array(y[i : i + 1]))
        out.append({name: np.array(g) for name, g in tree_flatten(grads)})
    return out


@pytest.mark.parametrize("vectorize", [True, False])
def test_per_example_gradients_equal_a_loop(digits: Dataset, vectorize: bool) -> None:
    model = _mlp()
    before = get_weights(model)
    x, y = digits.x[:12], digits.y[:12]
    named, losses, correct = per_example_gradients(model, mx.array(x), mx.array(y), vectorize=vectorize)
    oracle = _loop_gradients(model, x, y)
    assert [name for name, _ in named] == list(oracle[0])
    for name, grads in named:
        assert grads.shape[0] == 12
        for i in range(12):
            np.testing.assert_allclose(np.array(grads[i]), oracle[i][name], rtol=1e-5, atol=1e-6)
    logits = np.array(model(mx.array(x)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(12), y]
    np.testing.assert_allclose(np.array(losses), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.array(correct), logits.argmax(axis=1) == y)
    # The model's parameters are real arrays again, unchanged.
    after = get_weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_every_clipped_gradient_is_within_the_clip(digits: Dataset) -> None:
    model = _mlp()
    x, y = digits.x[:64], digits.y[:64]
    _, raw_norms = clipped_per_example_gradients(model, x, y, clip=1e9)
    clip = float(np.median(raw_norms))  # half the examples get clipped, half do not
    clipped, norms = clipped_per_example_gradients(model, x, y, clip=clip)
    np.testing.assert_array_equal(norms, raw_norms)
    clipped_norms = np.sqrt(sum(np.square(g.reshape(64, -1)).sum(axis=1) for g in clipped.values()))
    assert (norms > clip).sum() >= 30 and (norms < clip).sum() >= 30
    assert np.all(clipped_norms <= clip * (1 + 1e-5))  # float32: a few parts in 10^7 at most
    np.testing.assert_allclose(clipped_norms, np.minimum(norms, clip), rtol=1e-5)
    # Clipping rescales each example's gradient as a whole (same direction).
    raw = _loop_gradients(model, x[:3], y[:3])
    for i in range(3):
        factor = min(1.0, clip / norms[i])
        for name, value in raw[i].items():
            np.testing.assert_allclose(clipped[name][i], value * factor, rtol=1e-4, atol=1e-7)


def test_masked_rows_do_not_count() -> None:
    grads = [mx.ones((4, 3)), mx.ones((4,))]
    clipped, norms = clip_per_example(grads, 1.0, mx.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(np.array(norms), [2.0] * 4)
    np.testing.assert_allclose(np.array(clipped[0]).sum(axis=1), [1.5, 0.0, 1.5, 0.0], rtol=1e-6)
    zero, _ = clip_per_example([mx.zeros((2, 3))], 1.0)  # zero gradients: no 0/0
    assert np.all(np.isfinite(np.array(zero[0])))


def _sgd_step(model: nn.Module, proximal: bool = False) -> tuple[optim.Optimizer, DpSgdStep]:
    optimizer = optim.SGD(learning_rate=1.0)
    optimizer.init(model.trainable_parameters())
    return optimizer, DpSgdStep(model, optimizer, proximal=proximal)


def _padded(x: np.ndarray, y: np.ndarray, rows: int) -> tuple[mx.array, mx.array, mx.array]:
    pad = rows - len(y)
    xb = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
    yb = np.concatenate([y, np.repeat(y[:1], pad)])
    mask = np.r_[np.ones(len(y)), np.zeros(pad)].astype(np.float32)
    return mx.array(xb), mx.array(yb.astype(np.int32)), mx.array(mask)


def test_compiled_step_matches_the_reference_and_chunks_add_up(digits: Dataset) -> None:
    x, y, clip, expected_batch = digits.x[:10], digits.y[:10], 0.8, 12.5
    start = get_weights(_mlp())
    reference = private_gradient(_mlp(), x, y, clip=clip, noise_multiplier=0.0, expected_batch=expected_batch)

    # One padded batch of 16 rows (6 masked), no noise, SGD with lr 1: the update is minus the gradient.
    model = _mlp()
    _, dp = _sgd_step(model)
    zeros = mx.zeros((dp.num_parameters,))
    dp.step(*_padded(x, y, 16), zeros, [], mx.array(0.0), mx.array(clip), mx.array(1 / expected_batch))
    whole = get_weights(model)
    for name in start:
        np.testing.assert_allclose(whole[name] - start[name], -reference[name], rtol=1e-4, atol=1e-6)

    # The same examples as an overflow chunk (accumulate) plus a smaller padded batch: same update.
    model = _mlp()
    _, dp = _sgd_step(model)
    extra, loss_a, correct_a = dp.accumulate(*_padded(x[:6], y[:6], 8), mx.array(clip))
    loss_b, correct_b = dp.step(*_padded(x[6:], y[6:], 8), zeros + extra, [], mx.array(0.0), mx.array(clip),
                                mx.array(1 / expected_batch))
    split = get_weights(model)
    for name in start:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-7)
    assert float(np.array(correct_a + correct_b)) <= 10 and float(np.array(loss_a + loss_b)) > 0


def test_trainer_noise_has_std_sigma_c_and_is_not_from_the_seed(digits: Dataset) -> None:
    """q = 1 makes the batch deterministic, so two fits differ only by noise: update = -(sum + noise) / N."""
    x, y = digits.x[:40], digits.y[:40]
    trainer = LocalTrainer(_mlp())
    start = get_weights(_mlp())
    sigma, clip, lr, n = 1.3, 0.7, 1.0, 40
    quiet = TrainConfig(learning_rate=lr, dp_clip=clip, dp_noise_multiplier=0.0, dp_sampling_rate=1.0)
    noisy = TrainConfig(learning_rate=lr, dp_clip=clip, dp_noise_multiplier=sigma, dp_sampling_rate=1.0)
    base = trainer.fit(start, x, y, quiet, seed=0).update
    draws = []
    for _ in range(4):
        update = trainer.fit(start, x, y, noisy, seed=0).update  # the same seed every time
        draws.append(np.concatenate([(base[k] - update[k]).ravel() * n / lr for k in base]))
    noise = np.concatenate(draws)
    assert noise.size > 19_000
    assert float(np.std(noise)) == pytest.approx(sigma * clip, rel=0.05)
    assert abs(float(np.mean(noise))) < 0.05 * sigma * clip
    assert not np.allclose(draws[0], draws[1])  # fresh noise although the seed is the same


def test_no_noise_huge_clip_full_batch_is_the_plain_gradient_step(digits: Dataset) -> None:
    x, y = digits.x[:50], digits.y[:50]
    start = get_weights(_mlp())
    dp = LocalTrainer(_mlp()).fit(
        start, x, y, TrainConfig(learning_rate=0.1, dp_clip=1e6, dp_sampling_rate=1.0), seed=0
    )
    assert (dp.dp_steps, dp.dp_sampling_rate) == (1, 1.0)
    reference = _mlp()
    set_weights(reference, start)

    def loss(xb: mx.array, yb: mx.array) -> mx.array:
        return nn.losses.cross_entropy(reference(xb), yb, reduction="mean")

    _, grads = nn.value_and_grad(reference, loss)(mx.array(x), mx.array(y))
    for name, g in tree_flatten(grads):
        np.testing.assert_allclose(dp.update[name], -0.1 * np.array(g), rtol=1e-4, atol=1e-6)


def test_vmap_support_is_detected() -> None:
    x, y = np.zeros((2, 64), np.float32), np.zeros(2, np.int64)
    assert supports_vmap(_mlp(), x, y)
    cnn = build_model("cnn", input_shape=(8, 8, 1), num_classes=10, seed=0)
    before = get_weights(cnn)
    assert not supports_vmap(cnn, x, y)  # MLX has no vmap rule for the convolution's gradient
    after = get_weights(cnn)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_cnn_trains_with_dp_through_the_unrolled_fallback(digits: Dataset) -> None:
    model = build_model("cnn", input_shape=(8, 8, 1), num_classes=10, seed=0)
    start = get_weights(model)
    cfg = TrainConfig(batch_size=8, learning_rate=0.1, dp_clip=1.0, dp_noise_multiplier=0.5)
    result = LocalTrainer(model).fit(start, digits.x[:32], digits.y[:32], cfg, seed=0)
    assert result.dp_steps == 4 and result.dp_sampling_rate == 0.25
    assert all(np.isfinite(v).all() for v in result.update.values())
    assert any(np.abs(v).sum() > 0 for v in result.update.values())


# ------------------------------------------------------------------------------------------ sampling


def test_poisson_sample_inclusion_probability() -> None:
    rng = np.random.default_rng(0)
    n, q, trials = 50, 0.1, 4000
    counts = np.zeros(n)
    sizes = []
    for _ in range(trials):
        sample = poisson_sample(rng, n, q)
        assert np.all(np.diff(sample) > 0)  # sorted, no repeats
        counts[sample] += 1
        sizes.append(len(sample))
    assert np.mean(sizes) == pytest.approx(n * q, rel=0.03)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.1)  # Binomial, not a fixed size
    assert np.all(np.abs(counts / trials - q) < 0.03)


@pytest.mark.parametrize(("n", "q", "rows"), [
    (1000, 0.016, 24),   # mean 16, std ~4: 20 -> 24
    (1000, 0.064, 72),   # mean 64, std ~7.7: 71.7 -> 72
    (10, 1.0, 16),       # full batch: never overflows
    (3, 1.0, 4),         # capped at the plain trainer's next power of two
    (100, 0.001, 8),     # at least 8
])
def test_poisson_batch_rows(n: int, q: float, rows: int) -> None:
    assert poisson_batch_rows(n, q) == rows
    assert poisson_batch_rows(n, q) >= min(n, n * q)

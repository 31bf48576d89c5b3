"""Local MLX training: convergence, update arithmetic, FedProx, Adam, determinism, evaluation, config."""

from __future__ import annotations

import time
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn

from federated.data import Dataset, load_dataset
from federated.models import ModelError, build_model, get_weights, set_weights
from federated.worker.trainer import FitResult, LocalTrainer, TrainConfig


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trainer() -> LocalTrainer:
    # One trainer for the whole module, as a worker process would use it for many clients.
    return LocalTrainer(build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0))


@pytest.fixture(scope="module")
def initial(trainer: LocalTrainer) -> dict[str, np.ndarray]:
    return get_weights(build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0))


def _apply(weights: dict[str, np.ndarray], update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: weights[k] + update[k] for k in weights}


def _norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v))) for v in update.values())))


def test_training_reduces_loss_on_digits(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, test = digits
    before_loss, before_acc = trainer.evaluate(initial, test.x, test.y)
    result = trainer.fit(initial, train.x, train.y, TrainConfig(epochs=3, momentum=0.9), seed=0)
    after_loss, after_acc = trainer.evaluate(_apply(initial, result.update), test.x, test.y)
    assert after_loss < 0.5 * before_loss
    assert after_acc > 0.85 > before_acc
    assert result.num_samples == len(train)
    assert 0.0 < result.loss < before_loss and 0.0 < result.accuracy <= 1.0
    assert result.train_s > 0.0


def test_update_is_exactly_local_minus_global(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    result = trainer.fit(initial, train.x[:100], train.y[:100], TrainConfig(), seed=1)
    local = get_weights(trainer.model)
    assert list(result.update) == list(initial)
    for name, value in result.update.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, local[name] - initial[name])
    # Applying the update to a fresh copy of the global model reproduces the local model's outputs.
    fresh = build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=5)
    set_weights(fresh, _apply(initial, result.update))
    x = mx.array(train.x[:20])
    np.testing.assert_allclose(np.array(fresh(x)), np.array(trainer.model(x)), rtol=1e-5, atol=1e-5)


def test_fedprox_keeps_update_closer_to_global(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    x, y = train.x[:300], train.y[:300]
    plain = trainer.fit(initial, x, y, TrainConfig(epochs=3), seed=2)
    prox = trainer.fit(initial, x, y, TrainConfig(epochs=3, proximal_mu=5.0), seed=2)
    assert _norm(prox.update) < 0.7 * _norm(plain.update)
    # Same data and seed with mu = 0 again: the prox step did not leak state into the plain one.
    again = trainer.fit(initial, x, y, TrainConfig(epochs=3), seed=2)
    assert all(np.array_equal(again.update[k], plain.update[k]) for k in plain.update)


def test_adam_trains(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, test = digits
    cfg = TrainConfig(epochs=2, optimizer="adam", learning_rate=0.01)
    result = trainer.fit(initial, train.x, train.y, cfg, seed=0)
    _, accuracy = trainer.evaluate(_apply(initial, result.update), test.x, test.y)
    assert accuracy > 0.85


def test_same_seed_same_update_different_seed_different(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    x, y = train.x[:200], train.y[:200]
    cfg = TrainConfig(epochs=2, momentum=0.5)
    a, b, c = (trainer.fit(initial, x, y, cfg, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(a.update[k], b.update[k]) for k in a.update)
    assert (a.loss, a.accuracy) == (b.loss, b.accuracy)
    assert not all(np.array_equal(a.update[k], c.update[k]) for k in a.update)


def test_optimizer_state_is_reset_between_fits(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    cfg = TrainConfig(optimizer="adam", learning_rate=0.01)
    first = trainer.fit(initial, train.x[:64], train.y[:64], cfg, seed=3)
    trainer.fit(initial, train.x[500:900], train.y[500:900], cfg, seed=4)  # another client in between
    second = trainer.fit(initial, train.x[:64], train.y[:64], cfg, seed=3)
    assert all(np.array_equal(first.update[k], second.update[k]) for k in first.update)


def test_padded_batch_gives_the_plain_gradient(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    """10 samples run as one 16-row batch with 6 masked rows: one SGD step must equal -lr * mean grad."""
    train, _ = digits
    x, y = train.x[:10], train.y[:10]
    result = trainer.fit(initial, x, y, TrainConfig(learning_rate=0.1), seed=0)
    reference = build_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0)
    set_weights(reference, initial)

    def loss(xb: mx.array, yb: mx.array) -> mx.array:
        return nn.losses.cross_entropy(reference(xb), yb, reduction="mean")

    _, grads = nn.value_and_grad(reference, loss)(mx.array(x), mx.array(y))
    flat = dict(_flatten(grads))
    for name, value in result.update.items():
        np.testing.assert_allclose(value, -0.1 * np.array(flat[name]), rtol=1e-4, atol=1e-6)


def _flatten(tree: Any) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return list(tree_flatten(tree))


def test_evaluate_matches_numpy(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, test = digits
    weights = _apply(initial, trainer.fit(initial, train.x, train.y, TrainConfig(), seed=0).update)
    loss, accuracy = trainer.evaluate(weights, test.x, test.y, batch_size=100)  # several batches
    hidden = np.maximum(test.x @ weights["layers.0.weight"].T + weights["layers.0.bias"], 0.0)
    logits = (hidden @ weights["layers.1.weight"].T + weights["layers.1.bias"]).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert accuracy == pytest.approx(float(np.mean(logits.argmax(axis=1) == test.y)), abs=1e-12)
    assert loss == pytest.approx(float(-log_probs[np.arange(len(test.y)), test.y].mean()), rel=1e-4)


def test_clients_of_any_size_share_one_trainer(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    for n in (1, 3, 14, 33, 144):
        result = trainer.fit(initial, train.x[:n], train.y[:n], TrainConfig(epochs=2), seed=n)
        assert isinstance(result, FitResult) and result.num_samples == n
        assert np.isfinite(result.loss) and 0.0 <= result.accuracy <= 1.0


def test_small_fit_is_cheap_after_warm_up(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    """Loose guard (the target is ~1 ms; shared CI machines are noisy): a 14-sample fit stays well under 20 ms."""
    train, _ = digits
    x, y = train.x[:14], train.y[:14]
    for seed in range(3):
        trainer.fit(initial, x, y, TrainConfig(), seed=seed)
    times = []
    for seed in range(30):
        start = time.perf_counter()
        trainer.fit(initial, x, y, TrainConfig(), seed=seed)
        times.append(time.perf_counter() - start)
    assert float(np.median(times)) < 0.02


def test_cnn_trains_through_the_same_trainer(digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits
    model = build_model("cnn", input_shape=(8, 8, 1), num_classes=10, seed=0)
    start = get_weights(model)
    result = LocalTrainer(model).fit(start, train.x[:64], train.y[:64], TrainConfig(), seed=0)
    assert set(result.update) == set(start) and _norm(result.update) > 0


def test_synthetic_is_learnable_but_not_trivial() -> None:
    train, test = load_dataset("synthetic", seed=0)
    model = build_model("mlp", input_shape=train.input_shape, num_classes=10, seed=0)
    local = LocalTrainer(model)
    start = get_weights(model)
    cfg = TrainConfig(epochs=5, momentum=0.9)
    result = local.fit(start, train.x, train.y, cfg, seed=0)
    _, accuracy = local.evaluate(_apply(start, result.update), test.x, test.y)
    assert 0.5 < accuracy < 0.99


def test_bad_inputs(trainer: LocalTrainer, initial: dict[str, np.ndarray]) -> None:
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ModelError, match="missing tensor"):
        trainer.fit({}, x, y, TrainConfig(), seed=0)
    with pytest.raises(ValueError, match="x must have shape"):
        trainer.fit(initial, x[:3], y, TrainConfig(), seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        trainer.evaluate(initial, x[:0], y[:0])
    with pytest.raises(ValueError, match="integer labels"):
        trainer.fit(initial, x, y.astype(np.float32), TrainConfig(), seed=0)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(initial, x, y, TrainConfig(epochs=0), seed=0)


# -------------------------------------------------------------------------------------------- config


def test_config_round_trip() -> None:
    cfg = TrainConfig(epochs=3, batch_size=8, learning_rate=0.1, optimizer="adam", proximal_mu=0.01)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    dp = TrainConfig(dp_clip=1.0, dp_noise_multiplier=1.1, dp_sampling_rate=0.01)
    assert TrainConfig.from_dict(dp.to_dict()) == dp and dp.dp_enabled and not cfg.dp_enabled
    assert TrainConfig.from_dict({"dp_clip": 2}).dp_clip == 2.0
    assert TrainConfig.from_dict({}) == TrainConfig()
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"epochs": 1, "lr": 0.1}, r"unknown key\(s\) \['lr'\]"),
        ({"epochs": True}, r"train\.epochs: must be an integer in \[1, 1000\], got True"),
        ({"epochs": 1.0}, r"train\.epochs: must be an integer in \[1, 1000\], got 1\.0"),
        ({"batch_size": "32"}, r"train\.batch_size: must be an integer in \[1, 65536\], got '32'"),
        ({"learning_rate": "0.1"}, r"train\.learning_rate: must be a number in \(0\.0, 10\.0\], got '0\.1'"),
        ({"momentum": None}, r"train\.momentum: must be a number in \[0\.0, 1\.0\), got None"),
        ({"optimizer": 1}, "train.optimizer: 1 is not one of sgd, adam"),
        ({"optimizer": "rmsprop"}, "train.optimizer: 'rmsprop' is not one of sgd, adam"),
        ({"epochs": 0}, r"epochs: must be an integer in \[1, 1000\]"),
        ({"epochs": 10**9}, r"epochs: must be an integer in \[1, 1000\]"),
        ({"batch_size": -1}, r"batch_size: must be an integer in \[1, 65536\]"),
        ({"batch_size": 65537}, r"batch_size: must be an integer in \[1, 65536\]"),
        ({"learning_rate": 0}, r"learning_rate: must be a number in \(0\.0, 10\.0\]"),
        ({"learning_rate": float("inf")}, r"learning_rate: must be a number in \(0\.0, 10\.0\]"),
        ({"learning_rate": 11.0}, r"learning_rate: must be a number in \(0\.0, 10\.0\]"),
        ({"momentum": 1.0}, r"momentum: must be a number in \[0\.0, 1\.0\)"),
        ({"proximal_mu": float("nan")}, r"proximal_mu: must be a number in \[0\.0, 1000000\.0\]"),
        ({"proximal_mu": -0.1}, r"proximal_mu: must be a number in \[0\.0, 1000000\.0\]"),
        ({"proximal_mu": 2e6}, r"proximal_mu: must be a number in \[0\.0, 1000000\.0\]"),
        ({"dp_clip": -1.0}, r"dp_clip: must be a number in \[0\.0, 1000000000\.0\] \(0 = DP-SGD off\)"),
        ({"dp_clip": float("inf")}, r"dp_clip: must be a number in \[0\.0, 1000000000\.0\]"),
        ({"dp_clip": "1"}, r"dp_clip: must be a number in .*, got '1'"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": -0.5}, r"dp_noise_multiplier: must be a number in \[0\.0, 1000000\.0\]"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": float("nan")}, "dp_noise_multiplier: must be a number"),
        ({"dp_clip": 1.0, "dp_sampling_rate": 1.5},
         r"dp_sampling_rate: must be a number in \[0\.0, 1\.0\] \(0 = batch_size / N\)"),
        ({"dp_clip": 1.0, "dp_sampling_rate": float("nan")}, r"dp_sampling_rate: must be a number in \[0\.0, 1\.0\]"),
        ({"dp_noise_multiplier": 1.0}, "need dp_clip > 0"),
        ({"dp_sampling_rate": 0.1}, "need dp_clip > 0"),
        ({"dp_sampling_rate": True}, r"dp_sampling_rate: must be a number in .*, got True"),
    ],
)
def test_from_dict_rejects_junk(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "epochs=1", 3])
def test_from_dict_needs_a_mapping(data: Any) -> None:
    with pytest.raises(ValueError, match="must be a JSON object"):
        TrainConfig.from_dict(data)


# -------------------------------------------------------------------------------------------- DP-SGD


def test_dp_fit_reports_its_steps_and_sampling_rate(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    x, y = train.x[:144], train.y[:144]
    result = trainer.fit(initial, x, y, TrainConfig(epochs=2, batch_size=16, dp_clip=1.0,
                                                    dp_noise_multiplier=1.0), seed=0)
    assert result.dp_sampling_rate == 16 / 144  # batch_size / N
    assert result.dp_steps == 2 * 9  # epochs * round(1 / q)
    assert 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.loss)
    chosen = trainer.fit(initial, x, y, TrainConfig(dp_clip=1.0, dp_sampling_rate=0.3), seed=0)
    assert (chosen.dp_sampling_rate, chosen.dp_steps) == (0.3, 3)
    tiny = trainer.fit(initial, x[:1], y[:1], TrainConfig(dp_clip=1.0), seed=0)  # q = min(1, 32 / 1)
    assert (tiny.dp_sampling_rate, tiny.dp_steps) == (1.0, 1)
    plain = trainer.fit(initial, x, y, TrainConfig(), seed=0)
    assert (plain.dp_steps, plain.dp_sampling_rate) == (0, 0.0)


def test_dp_training_still_learns_digits(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, test = digits
    cfg = TrainConfig(epochs=3, momentum=0.9, dp_clip=1.0, dp_noise_multiplier=0.8)
    result = trainer.fit(initial, train.x, train.y, cfg, seed=0)
    _, accuracy = trainer.evaluate(_apply(initial, result.update), test.x, test.y)
    assert accuracy > 0.7


def test_dp_with_fedprox_equals_plain_fedprox_when_nothing_is_private(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    """No noise, a clip nobody reaches and q = 1: DP-SGD is full-batch gradient descent, and the
    proximal term (added after clipping and noise) must act exactly as in the plain step."""
    train, _ = digits
    x, y = train.x[:64], train.y[:64]
    common = {"epochs": 4, "learning_rate": 0.5, "proximal_mu": 2.0}
    plain = trainer.fit(initial, x, y, TrainConfig(batch_size=64, **common), seed=0)
    dp = trainer.fit(initial, x, y, TrainConfig(dp_clip=1e6, dp_sampling_rate=1.0, **common), seed=0)
    assert dp.dp_steps == 4
    for name in plain.update:
        np.testing.assert_allclose(dp.update[name], plain.update[name], rtol=1e-4, atol=1e-6)
    no_prox = trainer.fit(initial, x, y, TrainConfig(epochs=4, learning_rate=0.5, dp_clip=1e6,
                                                     dp_sampling_rate=1.0), seed=0)
    assert _norm(dp.update) < _norm(no_prox.update)


def test_dp_fits_leave_the_plain_path_as_it_was(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    x, y = train.x[:100], train.y[:100]
    cfg = TrainConfig(epochs=2, momentum=0.5)
    before = trainer.fit(initial, x, y, cfg, seed=4)
    private = TrainConfig(epochs=2, momentum=0.5, dp_clip=0.5, dp_noise_multiplier=1.0)
    trainer.fit(initial, x, y, private, seed=4)
    after = trainer.fit(initial, x, y, cfg, seed=4)
    assert all(np.array_equal(before.update[k], after.update[k]) for k in before.update)


def test_dp_sampling_follows_the_seed_when_there_is_no_noise(
    trainer: LocalTrainer, initial: dict[str, np.ndarray], digits: tuple[Dataset, Dataset]
) -> None:
    train, _ = digits
    x, y = train.x[:200], train.y[:200]
    cfg = TrainConfig(dp_clip=0.5, dp_sampling_rate=0.1)
    a, b, c = (trainer.fit(initial, x, y, cfg, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a.update[k], b.update[k]) for k in a.update)
    assert not all(np.array_equal(a.update[k], c.update[k]) for k in a.update)


def test_dp_refuses_absurd_step_counts(trainer: LocalTrainer, initial: dict[str, np.ndarray]) -> None:
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="DP-SGD would run"):
        trainer.fit(initial, x, y, TrainConfig(epochs=10, dp_clip=1.0, dp_sampling_rate=1e-6), seed=0)

"""Model building, user factories, seeded initialisation and weights in and out."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn

import federated.models
from federated.models import ModelError, build_model, get_weights, set_weights


@pytest.mark.parametrize("spec", ["mlp", "cnn"])
def test_builtin_models_map_flat_digits_to_logits(spec: str) -> None:
    model = build_model(spec, input_shape=(8, 8, 1), num_classes=10, seed=0)
    out = model(mx.zeros((5, 64)))
    assert out.shape == (5, 10)


def test_mlp_parameter_names_are_tree_flatten_paths() -> None:
    weights = get_weights(build_model("mlp", input_shape=(64,), num_classes=10, seed=0))
    assert list(weights) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert weights["layers.0.weight"].shape == (64, 64)
    assert weights["layers.1.weight"].shape == (10, 64)


@pytest.mark.parametrize(("shape", "features"), [((8, 8, 1), 64), ((12, 10), 120), ((9, 9, 3), 243)])
def test_cnn_accepts_image_shapes(shape: tuple[int, ...], features: int) -> None:
    model = build_model("cnn", input_shape=shape, num_classes=4, seed=0)
    assert model(mx.zeros((2, features))).shape == (2, 4)


def test_cnn_rejects_flat_features() -> None:
    with pytest.raises(ModelError, match="needs an image input_shape"):
        build_model("cnn", input_shape=(64,), num_classes=10)


@pytest.mark.parametrize("spec", ["", "MLP", "resnet", "module:", ":factory", "nomodule"])
def test_unknown_spec_names_allowed_values(spec: str) -> None:
    with pytest.raises(ModelError, match='"mlp", "cnn", "cnn1d", "logistic", "MODULE:FACTORY"'):
        build_model(spec, input_shape=(64,), num_classes=10)


def test_cnn1d_is_mnist1d_convbase() -> None:
    weights = get_weights(build_model("cnn1d", input_shape=(40,), num_classes=10, seed=0))
    shapes = {name: value.shape for name, value in weights.items()}
    assert shapes == {"convs.0.weight": (25, 5, 1), "convs.0.bias": (25,), "convs.1.weight": (25, 3, 25),
                      "convs.1.bias": (25,), "convs.2.weight": (25, 3, 25), "convs.2.bias": (25,),
                      "head.weight": (10, 125), "head.bias": (10,)}
    assert sum(v.size for v in weights.values()) == 5210


@pytest.mark.parametrize(("shape", "features"), [((40,), 40), ((3,), 3), ((17, 2), 34)])
def test_cnn1d_accepts_signal_shapes(shape: tuple[int, ...], features: int) -> None:
    model = build_model("cnn1d", input_shape=shape, num_classes=4, seed=0)
    assert model(mx.zeros((2, features))).shape == (2, 4)


@pytest.mark.parametrize("shape", [(2,), (8, 8, 1)])
def test_cnn1d_rejects_short_signals_and_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match="needs a signal input_shape"):
        build_model("cnn1d", input_shape=shape, num_classes=10)


def test_logistic_is_one_linear_layer() -> None:
    model = build_model("logistic", input_shape=(60,), num_classes=10, seed=0)
    weights = get_weights(model)
    assert {k: v.shape for k, v in weights.items()} == {"linear.weight": (10, 60), "linear.bias": (10,)}
    x = np.random.default_rng(0).normal(size=(3, 60)).astype(np.float32)
    expected = x @ weights["linear.weight"].T + weights["linear.bias"]
    np.testing.assert_allclose(np.array(model(mx.array(x))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("spec", "shape"), [("mlp", (40,)), ("cnn", (8, 8, 1)), ("cnn1d", (40,)),
                                             ("logistic", (60,))])
def test_builtin_models_train(spec: str, shape: tuple[int, ...]) -> None:
    # A linearly separable problem: a few epochs of SGD from a seeded start must lower the training loss.
    from federated.worker.trainer import LocalTrainer, TrainConfig

    features = int(np.prod(shape))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
    trainer = LocalTrainer(build_model(spec, input_shape=shape, num_classes=4, seed=0))
    start = get_weights(trainer.model)
    before, _ = trainer.evaluate(start, x, y)
    result = trainer.fit(start, x, y, TrainConfig(epochs=5, batch_size=16, learning_rate=0.05), seed=0)
    after, _ = trainer.evaluate({k: start[k] + result.update[k] for k in start}, x, y)
    assert all(np.isfinite(v).all() for v in result.update.values())
    assert after < before


@pytest.mark.parametrize(("shape", "classes"), [((), 10), ((0,), 10), ((64,), 0), ((8.0,), 10)])
def test_bad_shapes_are_model_errors(shape: tuple[int, ...], classes: int) -> None:
    with pytest.raises(ModelError):
        build_model("mlp", input_shape=shape, num_classes=classes)


# ------------------------------------------------------------------------------------- user factories

_counter = itertools.count()

USER_MODULE = """
from mlx import nn

class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(10, 2)

    def __call__(self, x):
        return self.linear(x)

def sized(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes)

def only_classes(*, num_classes):
    return nn.Linear(3, num_classes)

def anything(**kwargs):
    return nn.Linear(kwargs["input_shape"][0], kwargs["num_classes"])

def not_a_model():
    return 42

def broken():
    raise RuntimeError("boom")

class Holder:
    make = SimpleModel
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_models_{next(_counter)}"  # fresh name: sys.modules caches imports
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize(
    ("factory", "out_features"),
    [("SimpleModel", 2), ("sized", 7), ("only_classes", 7), ("anything", 7), ("Holder.make", 2)],
)
def test_factory_specs(user_module: str, factory: str, out_features: int) -> None:
    model = build_model(f"{user_module}:{factory}", input_shape=(5,), num_classes=7, seed=1)
    assert isinstance(model, nn.Module)
    weight = next(v for k, v in get_weights(model).items() if k.endswith("weight"))
    assert weight.shape[0] == out_features


@pytest.mark.parametrize(
    ("factory", "problem"),
    [
        ("missing", "has no attribute 'missing'"),
        ("not_a_model", "returned int, not an mlx.nn.Module"),
        ("broken", "factory raised RuntimeError: boom"),
    ],
)
def test_factory_failures_are_model_errors(user_module: str, factory: str, problem: str) -> None:
    with pytest.raises(ModelError, match=problem):
        build_model(f"{user_module}:{factory}", input_shape=(5,), num_classes=7)


def test_missing_module_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="cannot import module 'no_such_module_xyz'"):
        build_model("no_such_module_xyz:Model", input_shape=(5,), num_classes=2)


# --------------------------------------------------------------------------------------- seeded init


@pytest.mark.parametrize(("spec", "shape"), [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1)), ("cnn1d", (40,)),
                                             ("logistic", (60,))])
def test_same_seed_same_initial_weights(spec: str, shape: tuple[int, ...]) -> None:
    a = get_weights(build_model(spec, input_shape=shape, num_classes=10, seed=42))
    b = get_weights(build_model(spec, input_shape=shape, num_classes=10, seed=42))
    c = get_weights(build_model(spec, input_shape=shape, num_classes=10, seed=43))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_seeded_build_restores_global_random_state() -> None:
    mx.random.seed(5)
    expected = np.array(mx.random.uniform(shape=(4,)))
    mx.random.seed(5)
    build_model("mlp", input_shape=(64,), num_classes=10, seed=123)
    # Later MLX randomness must not follow from the (public) model seed.
    np.testing.assert_array_equal(np.array(mx.random.uniform(shape=(4,))), expected)


def test_seed_none_uses_global_state() -> None:
    a = get_weights(build_model("mlp", input_shape=(64,), num_classes=10))
    b = get_weights(build_model("mlp", input_shape=(64,), num_classes=10))
    assert not np.array_equal(a["layers.0.weight"], b["layers.0.weight"])


# ------------------------------------------------------------------------------------------- weights


def test_get_weights_returns_float32_copies() -> None:
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=0)
    weights = get_weights(model)
    assert all(v.dtype == np.float32 for v in weights.values())
    weights["layers.0.bias"][:] = 99.0
    assert not np.any(get_weights(model)["layers.0.bias"] == 99.0)


def test_set_weights_round_trip_changes_outputs() -> None:
    source = build_model("mlp", input_shape=(64,), num_classes=10, seed=1)
    target = build_model("mlp", input_shape=(64,), num_classes=10, seed=2)
    x = mx.array(np.random.default_rng(0).random((3, 64), dtype=np.float32))
    set_weights(target, {k: v.astype(np.float64) for k, v in get_weights(source).items()})
    np.testing.assert_array_equal(np.array(target(x)), np.array(source(x)))
    assert all(np.array_equal(v, get_weights(target)[k]) for k, v in get_weights(source).items())


def test_set_weights_names_first_mismatch_and_changes_nothing() -> None:
    model = build_model("mlp", input_shape=(64,), num_classes=10, seed=0)
    good = get_weights(model)
    missing = {k: v for k, v in good.items() if k != "layers.1.bias"}
    with pytest.raises(ModelError, match="missing tensor 'layers.1.bias'"):
        set_weights(model, missing)
    with pytest.raises(ModelError, match="does not have"):
        set_weights(model, {**good, "layers.9.weight": np.zeros(1, np.float32)})
    wrong = {**good, "layers.0.weight": np.zeros((64, 63), np.float32)}
    wrong["layers.1.bias"] = np.zeros(10, np.float32)
    with pytest.raises(ModelError, match=r"'layers.0.weight' has shape \(64, 63\), model expects \(64, 64\)"):
        set_weights(model, wrong)
    assert all(np.array_equal(v, get_weights(model)[k]) for k, v in good.items())


def test_public_surface() -> None:
    names = federated.models.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert issubclass(ModelError, ValueError)

"""Published benchmarks generated offline: MNIST-1D (its reference generator) and LEAF Synthetic(α, β).

Every figure checked on random data is either exact for the fixed seed or carries a margin of at least
4.5 standard deviations of the statistic, derived in the test (no flakes whatever the seed).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest

from federated.data import DataError, Dataset, check_dataset_spec, load_dataset, partition_dataset, published

# ----------------------------------------------------------------------------------------------- MNIST-1D


@pytest.mark.slow  # generates MNIST-1D with its reference recipe (about 5 s)
def test_mnist1d_is_the_canonical_set() -> None:
    train, test = load_dataset("mnist1d")
    assert (len(train), len(test)) == (4000, 1000)
    for part in (train, test):
        assert part.x.dtype == np.float32 and part.x.shape == (len(part), 40)
        assert part.y.dtype == np.int32 and part.input_shape == (40,) and part.num_classes == 10
        assert part.devices is None
    assert set(np.unique(test.y)) == set(range(10))
    # The package's own generator with its default arguments is the oracle, split as it splits.
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    try:
        reference = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(train.x, reference["x"].astype(np.float32))
    np.testing.assert_array_equal(train.y, reference["y"])
    np.testing.assert_array_equal(test.x, reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(test.y, reference["y_test"])


def test_mnist1d_ignores_seed_and_callers_get_copies() -> None:
    a_train, a_test = load_dataset("mnist1d", seed=1, test_fraction=0.5)
    b_train, _ = load_dataset("mnist1d", seed=2)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    assert len(a_test) == 1000
    a_train.x[0, 0] = 123.0
    assert load_dataset("mnist1d")[0].x[0, 0] != 123.0


@pytest.mark.slow
def test_mnist1d_n_uses_the_same_recipe_and_split() -> None:
    train, test = load_dataset("mnist1d:200")
    assert (len(train), len(test)) == (160, 40)
    assert np.all(np.bincount(np.concatenate([train.y, test.y]), minlength=10) == 20)
    assert load_dataset("mnist1d:5000")[0].x.tobytes() == load_dataset("mnist1d")[0].x.tobytes()


def test_mnist1d_generation_does_not_reseed_the_process() -> None:
    published.mnist1d_arrays.cache_clear()  # generate for real, not from the cache
    np.random.seed(1234)
    random.seed(1234)
    published.mnist1d_arrays(100)
    after = (np.random.random(3), random.random())
    np.random.seed(1234)
    random.seed(1234)
    assert after == (pytest.approx(np.random.random(3)), random.random())


@pytest.mark.parametrize("spec", ["mnist1d:", "mnist1d:15", "mnist1d:0", "mnist1d:-10", "mnist1d:1e3",
                                  "mnist1d:abc", "mnist1d:1000010"])
def test_bad_mnist1d_specs_name_the_spec(spec: str) -> None:
    with pytest.raises(DataError, match=rf"{spec}.*multiple of 10"):
        check_dataset_spec(spec)


@pytest.mark.network  # a fresh interpreter
@pytest.mark.slow
def test_loading_mnist1d_does_not_import_mlx() -> None:
    code = ("import sys\nfrom federated.data import load_dataset\nload_dataset('mnist1d:100')\n"
            "print('mlx' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ LEAF Synthetic(α, β)


def test_leaf_synthetic_shapes_devices_and_per_device_split() -> None:
    train, test = load_dataset("leaf-synthetic:1,1", seed=0)
    for part in (train, test):
        assert part.x.dtype == np.float32 and part.x.shape[1] == 60 and part.input_shape == (60,)
        assert part.num_classes == 10 and part.devices is not None
        assert int(part.devices.max()) == 29
    assert train.devices is not None and test.devices is not None
    sizes = np.bincount(train.devices, minlength=30) + np.bincount(test.devices, minlength=30)
    assert sizes.min() >= 50
    # FedProx's generator keeps int(0.9 n) of each device for training.
    np.testing.assert_array_equal(np.bincount(train.devices, minlength=30), (0.9 * sizes).astype(int))
    seven, _ = load_dataset("leaf-synthetic:0.5,0.5,7", seed=0)
    assert seven.devices is not None and np.unique(seven.devices).tolist() == list(range(7))


def test_leaf_synthetic_is_deterministic_from_the_seed() -> None:
    a_train, a_test = load_dataset("leaf-synthetic:1,1", seed=5)
    b_train, b_test = load_dataset("leaf-synthetic:1,1", seed=5)
    c_train, _ = load_dataset("leaf-synthetic:1,1", seed=6)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    np.testing.assert_array_equal(a_test.y, b_test.y)
    assert a_train.devices is not None and b_train.devices is not None
    np.testing.assert_array_equal(a_train.devices, b_train.devices)
    assert a_train.x.shape != c_train.x.shape or not np.array_equal(a_train.x, c_train.x)


def test_leaf_synthetic_device_sizes_are_lognormal_4_2_plus_50() -> None:
    devices = 400
    data = published.leaf_synthetic(1.0, 1.0, devices, seed=0)
    extra = np.bincount(data.device, minlength=devices) - 50  # floor(lognormal(4, 2))
    assert extra.min() >= 0
    # floor(L) >= t  <=>  L >= ceil(t), with P(L >= c) = P(Z >= (ln c - 4) / 2); binomial margins of 4.5 sigma.
    for threshold in (8, 55, 403, 2981):  # about e^2, e^4, e^6, e^8: quantiles 0.16, 0.5, 0.84, 0.98
        p = 0.5 * math.erfc((math.log(threshold) - 4) / 2 / math.sqrt(2))
        margin = 4.5 * math.sqrt(p * (1 - p) / devices)
        assert abs(np.mean(extra >= threshold) - p) < margin


def test_leaf_synthetic_features_have_the_papers_covariance() -> None:
    data = published.leaf_synthetic(1.0, 1.0, 30, seed=0)
    biggest = int(np.argmax(np.bincount(data.device)))
    x = data.x[data.device == biggest].astype(np.float64)
    n = len(x)
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2
    # A sample variance of n normal draws has relative standard deviation sqrt(2 / (n - 1)).
    np.testing.assert_allclose(x.var(axis=0, ddof=1), expected, rtol=4.5 * math.sqrt(2 / (n - 1)))


def test_leaf_synthetic_models_differ_between_devices() -> None:
    # Synthetic(0, 0) still draws W_k ~ N(0, 1) per device; label histograms differ from device to device.
    data = published.leaf_synthetic(0.0, 0.0, 5, seed=0)
    histograms = [np.bincount(data.y[data.device == k], minlength=10) for k in range(5)]
    assert len({int(np.argmax(h)) for h in histograms}) > 1


@pytest.mark.parametrize("spec", ["leaf-synthetic:", "leaf-synthetic:1", "leaf-synthetic:1,1,0",
                                  "leaf-synthetic:1,1,10001", "leaf-synthetic:-1,1", "leaf-synthetic:1,nan",
                                  "leaf-synthetic:1,1,2.5", "leaf-synthetic:1,1,3,4", "leaf-synthetic:a,b"])
def test_bad_leaf_specs_name_the_spec(spec: str) -> None:
    with pytest.raises(DataError, match=rf"{spec}.*ALPHA, BETA >= 0"):
        check_dataset_spec(spec)


# ---------------------------------------------------------------------------------------- natural partition


def test_natural_partition_gives_client_i_device_i() -> None:
    train, _ = load_dataset("leaf-synthetic:1,1", seed=0)
    assert train.devices is not None
    parts = partition_dataset(train, 30, "natural", seed=123)
    assert len(parts) == 30
    for device, indices in enumerate(parts):
        np.testing.assert_array_equal(indices, np.flatnonzero(train.devices == device))
        assert indices.dtype == np.int64
    assert partition_dataset(train, 30, "natural", seed=0)[3].tolist() == parts[3].tolist()


def test_natural_partition_needs_one_client_per_device() -> None:
    train, _ = load_dataset("leaf-synthetic:1,1,12", seed=0)
    with pytest.raises(DataError, match=r"leaf-synthetic:1,1,12/train has 12 devices.*must be 12, got 10"):
        partition_dataset(train, 10, "natural", seed=0)


def test_natural_partition_refuses_data_without_devices() -> None:
    train, _ = load_dataset("synthetic", seed=0)
    with pytest.raises(DataError, match=r"synthetic/train has no natural split into devices"):
        partition_dataset(train, 10, "natural", seed=0)


def test_other_partitions_of_leaf_synthetic_still_work() -> None:
    train, _ = load_dataset("leaf-synthetic:1,1", seed=0)
    parts = partition_dataset(train, 10, "dirichlet:0.5", seed=0)
    assert sum(len(p) for p in parts) == len(train)


def test_dataset_checks_devices_and_subset_keeps_them() -> None:
    x, y = np.zeros((3, 2), np.float32), np.zeros(3, np.int32)
    with pytest.raises(DataError, match="devices"):
        Dataset(x, y, 2, (2,), "bad", devices=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="devices"):
        Dataset(x, y, 2, (2,), "bad", devices=np.array([0, -1, 0], np.int32))
    data = Dataset(x, y, 2, (2,), "ok", devices=np.array([0, 1, 1], np.int32))
    sub = data.subset(np.array([2, 0]))
    assert sub.devices is not None and sub.devices.tolist() == [1, 0]

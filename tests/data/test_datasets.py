"""Built-in datasets, npz directories and their validation errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from federated.data import DataError, Dataset, load_client_dir, load_dataset
from federated.data import datasets as datasets_module


def test_digits_shapes_and_scaling() -> None:
    train, test = load_dataset("digits")
    assert len(train) + len(test) == 1797
    for part in (train, test):
        assert part.x.dtype == np.float32 and part.x.shape == (len(part), 64)
        assert part.y.dtype == np.int32
        assert part.num_classes == 10 and part.input_shape == (8, 8, 1)
        assert 0.0 <= part.x.min() and part.x.max() <= 1.0
    assert set(np.unique(test.y)) == set(range(10))


def test_digits_split_is_stratified_and_disjoint() -> None:
    train, test = load_dataset("digits", seed=3, test_fraction=0.25)
    counts = np.bincount(test.y, minlength=10)
    totals = counts + np.bincount(train.y, minlength=10)
    np.testing.assert_allclose(counts / totals, 0.25, atol=0.01)
    # No sample is in both: the rows of the union are exactly the 1797 originals.
    union = np.concatenate([train.x, test.x])
    assert len(np.unique(union, axis=0)) == len(np.unique(datasets_module._digits_arrays()[0], axis=0))


@pytest.mark.parametrize("spec", ["digits", "synthetic"])
def test_loading_is_deterministic_per_seed(spec: str) -> None:
    a_train, a_test = load_dataset(spec, seed=7)
    b_train, b_test = load_dataset(spec, seed=7)
    c_train, _ = load_dataset(spec, seed=8)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    np.testing.assert_array_equal(a_test.y, b_test.y)
    assert not np.array_equal(a_train.x, c_train.x)


def test_synthetic_shapes() -> None:
    train, test = load_dataset("synthetic", seed=0)
    assert len(train) + len(test) == 4000
    assert train.x.shape[1] == 32 and train.input_shape == (32,) and train.num_classes == 10
    assert np.all(np.bincount(train.y, minlength=10) == 320)


def test_synthetic_n_scales_the_same_recipe() -> None:
    train, test = load_dataset("synthetic:100000", seed=0)
    assert len(train) + len(test) == 100_000 and train.x.shape[1] == 32
    assert np.all(np.bincount(train.y, minlength=10) == 8000)
    # synthetic:4000 is synthetic, sample for sample.
    np.testing.assert_array_equal(load_dataset("synthetic:4000", seed=3)[0].x, load_dataset("synthetic", seed=3)[0].x)
    for bad in ("synthetic:5", "synthetic:x", "synthetic:", "synthetic:2000001"):
        with pytest.raises(DataError, match="synthetic:N"):
            load_dataset(bad)


def test_digits_parse_is_cached_and_read_only() -> None:
    first = datasets_module._digits_arrays()
    assert datasets_module._digits_arrays() is first
    assert not first[0].flags.writeable
    train, _ = load_dataset("digits")
    train.x[0, 0] = 123.0  # callers get their own copies
    assert load_dataset("digits")[0].x[0, 0] != 123.0


@pytest.mark.network  # a fresh interpreter
def test_loading_digits_does_not_import_sklearn_or_mlx() -> None:
    code = (
        "import sys\n"
        "from federated.data import load_dataset\n"
        "load_dataset('digits')\n"
        "print(sorted(m for m in ('sklearn', 'mlx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_spec_names_allowed_values() -> None:
    with pytest.raises(DataError, match=r'"digits", "synthetic\[:N\]", "mnist1d\[:N\]", '
                                        r'"leaf-synthetic:ALPHA,BETA\[,DEVICES\]", "npz:DIR"'):
        load_dataset("mnist")
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


def test_dataset_checks_its_invariants() -> None:
    with pytest.raises(DataError, match="float32"):
        Dataset(np.zeros((2, 3)), np.zeros(2, np.int32), 2, (3,), "bad")
    with pytest.raises(DataError, match="input_shape"):
        Dataset(np.zeros((2, 3), np.float32), np.zeros(2, np.int32), 2, (4,), "bad")
    with pytest.raises(DataError, match="labels"):
        Dataset(np.zeros((2, 3), np.float32), np.array([0, 2], np.int32), 2, (3,), "bad")


def test_subset_keeps_metadata() -> None:
    train, _ = load_dataset("digits")
    part = train.subset(np.array([0, 5, 9]), name="client-1")
    assert len(part) == 3 and part.name == "client-1" and part.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(part.y, train.y[[0, 5, 9]])


# ------------------------------------------------------------------------------------------ npz round trip


def _write(directory: Path, name: str, **arrays: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / name, **arrays)  # type: ignore[arg-type]


def test_npz_round_trip_with_test_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    x_test, y_test = rng.normal(size=(10, 5)).astype(np.float32), np.arange(10) % 4
    _write(tmp_path, "train.npz", x=x_train, y=y_train)
    _write(tmp_path, "test.npz", x=x_test, y=y_test)
    train, test = load_dataset(f"npz:{tmp_path}")
    np.testing.assert_array_equal(train.x, x_train)
    np.testing.assert_array_equal(train.y, y_train)
    np.testing.assert_array_equal(test.x, x_test)
    assert train.num_classes == test.num_classes == 4  # the largest label anywhere decides
    assert train.input_shape == (5,)


def test_npz_without_test_file_is_split(tmp_path: Path) -> None:
    _write(tmp_path, "train.npz", x=np.arange(200, dtype=np.float32).reshape(100, 2), y=np.arange(100) % 2)
    train, test = load_dataset(f"npz:{tmp_path}", seed=1, test_fraction=0.2)
    assert (len(train), len(test)) == (80, 20)
    assert not set(train.x[:, 0]) & set(test.x[:, 0])


def test_npz_images_get_channel_axis_and_uint8_scaling(tmp_path: Path) -> None:
    x = np.full((6, 4, 4), 255, dtype=np.uint8)
    _write(tmp_path, "train.npz", x=x, y=np.arange(6) % 3)
    train, test = load_client_dir(tmp_path)
    assert test is None
    assert train.input_shape == (4, 4, 1) and train.x.shape == (6, 16)
    assert np.all(train.x == 1.0)


def test_client_dir_checks_labels_against_federation_classes(tmp_path: Path) -> None:
    _write(tmp_path, "train.npz", x=np.zeros((4, 2), np.float32), y=np.array([0, 1, 1, 0]))
    train, _ = load_client_dir(tmp_path, num_classes=10)
    assert train.num_classes == 10
    with pytest.raises(DataError, match=r"labels must be in 0\.\.0"):
        load_client_dir(tmp_path, num_classes=1)


def _object_array() -> np.ndarray:
    out = np.empty(3, dtype=object)
    out[:] = [{"a": 1}, None, "x"]
    return out


BAD_FILES: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "missing y": ({"x": np.zeros((3, 2), np.float32)}, r"missing array\(s\) \['y'\]"),
    "object x": ({"x": _object_array(), "y": np.zeros(3, np.int64)}, "cannot read arrays"),
    "string x": ({"x": np.array([["a", "b"]] * 3), "y": np.zeros(3, np.int64)}, "float or integer"),
    "1-D x": ({"x": np.zeros(3, np.float32), "y": np.zeros(3, np.int64)}, r"shape \(N, F\)"),
    "empty x": ({"x": np.zeros((0, 2), np.float32), "y": np.zeros(0, np.int64)}, "empty"),
    "nan x": ({"x": np.array([[np.nan, 0.0]] * 3, np.float32), "y": np.zeros(3, np.int64)}, "NaN"),
    "float y": ({"x": np.zeros((3, 2), np.float32), "y": np.zeros(3, np.float32)}, "integer class labels"),
    "short y": ({"x": np.zeros((3, 2), np.float32), "y": np.zeros(2, np.int64)}, r"shape \(3,\)"),
    "negative y": ({"x": np.zeros((3, 2), np.float32), "y": np.array([0, -1, 2])}, "labels must be"),
    "huge y": ({"x": np.zeros((3, 2), np.float32), "y": np.array([0, 1, 10**9])}, "labels must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_npz_raises_data_error_naming_file_and_problem(tmp_path: Path, case: str) -> None:
    arrays, problem = BAD_FILES[case]
    _write(tmp_path, "train.npz", **arrays)
    with pytest.raises(DataError, match=problem) as info:
        load_client_dir(tmp_path)
    assert "train.npz" in str(info.value)


def test_unreadable_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_client_dir(tmp_path / "nope")
    with pytest.raises(DataError, match="train.npz: file not found"):
        load_client_dir(tmp_path)
    (tmp_path / "train.npz").write_bytes(b"definitely not a zip file")
    with pytest.raises(DataError, match="train.npz: not a readable .npz"):
        load_client_dir(tmp_path)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npy").replace(tmp_path / "train.npz")
    with pytest.raises(DataError, match="single .npy array"):
        load_client_dir(tmp_path)


def test_test_file_must_match_train_shape(tmp_path: Path) -> None:
    _write(tmp_path, "train.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    _write(tmp_path, "test.npz", x=np.zeros((4, 5), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"test.npz: per-sample shape \(5,\) differs"):
        load_dataset(f"npz:{tmp_path}")

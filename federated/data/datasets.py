"""Datasets: the built-in ``digits`` and ``synthetic`` problems, published benchmarks, ``.npz`` directories.

A dataset spec (``--dataset``) is one of:

- ``digits``: the 8x8 handwritten digits bundled with scikit-learn (1,797 samples, 10 classes), read
  straight from the package's ``datasets/data/digits.csv.gz`` without importing scikit-learn (that import
  alone costs seconds). Pixels are scaled from 0..16 to [0, 1]; ``input_shape`` is (8, 8, 1).
- ``synthetic`` or ``synthetic:N``: a 10-class, 32-feature Gaussian-mixture problem generated from the
  seed, 4,000 samples or N (10 <= N <= 2,000,000; ``synthetic:4000`` is ``synthetic``). Each class is a
  mixture of two clusters in an 8-dimensional subspace, so a small MLP learns it well above chance but
  not perfectly. Generating a million samples takes about a second, so it scales to thousands of
  simulated clients.
- ``mnist1d`` or ``mnist1d:N``: MNIST-1D (40-sample signals, 10 classes) from its reference generator;
  the canonical 4,000 train / 1,000 test, or N samples with the same recipe, always with the package's own
  split and seed (``seed`` and ``test_fraction`` do not change it). See :mod:`federated.data.published`.
- ``leaf-synthetic:ALPHA,BETA[,DEVICES]``: the LEAF/FedProx Synthetic(α, β) federation (60 features,
  10 classes, 30 devices by default), generated from ``seed``. Its samples carry their device
  (:attr:`Dataset.devices`) for the ``natural`` partition; the test set is 10% of every device, as in
  the FedProx code (``test_fraction`` does not change it). See :mod:`federated.data.published`.
- ``npz:DIR``: a data directory in the format below.

Data directory format (``--dataset npz:DIR`` and ``flworker --data-path DIR``)
--------------------------------------------------------------------------------
``DIR/train.npz`` is required; ``DIR/test.npz`` is optional. For ``npz:DIR`` a missing ``test.npz`` means
``train.npz`` is split (stratified, from the seed); for a worker's ``--data-path`` it means the worker has
no local evaluation split. Each file is a NumPy ``.npz`` archive (``np.savez`` or ``np.savez_compressed``)
holding two arrays (other arrays are ignored):

- ``x``: numeric features, one row per sample, any float or integer dtype, shape

  - ``(N, F)`` flat features,
  - ``(N, H, W)`` greyscale images (a channel axis is added: input shape ``(H, W, 1)``),
  - ``(N, H, W, C)`` images with channels last (NHWC).

  ``uint8`` arrays are read as 0..255 intensities and divided by 255; any other dtype is used as given,
  so scale it yourself (to [0, 1], or zero mean and unit variance). Values must be finite.
- ``y``: integer class labels, shape ``(N,)``, from 0 to ``num_classes - 1`` (at most 10,000 classes).

``train.npz`` and ``test.npz`` must have the same per-sample shape. Files are read with
``allow_pickle=False``: object arrays are refused, nothing in the file is executed. For example::

    np.savez_compressed("mydata/train.npz", x=x_train.astype(np.float32), y=y_train.astype(np.int32))

Every problem with a file raises :class:`~federated.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import functools
import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from federated.data import published
from federated.data.errors import DataError

__all__ = ["MAX_CLASSES", "Dataset", "check_dataset_spec", "load_client_dir", "load_dataset"]

#: Upper bound on the number of classes a data file may imply; a larger label is almost surely a mistake
#: (an id column, an unencoded value) and would silently build a huge output layer.
MAX_CLASSES = 10_000

_DATASET_SPECS = '"digits", "synthetic[:N]", "mnist1d[:N]", "leaf-synthetic:ALPHA,BETA[,DEVICES]", "npz:DIR"'


@dataclass(frozen=True)
class Dataset:
    """A labelled classification dataset held in memory.

    ``x`` is float32 of shape (N, F) with flat features; ``input_shape`` is the per-sample shape models see
    (``prod(input_shape) == F``, e.g. (64,) or (8, 8, 1) for NHWC images). ``y`` is int32 of shape (N,) with
    labels in ``0 .. num_classes - 1``. ``devices``, for a data set with a natural per-device partition
    (``leaf-synthetic``), is int32 of shape (N,): the device (0, 1, ...) each sample belongs to; ``None``
    otherwise. Raises :class:`DataError` if these do not hold.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    devices: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Checked once here so that every consumer (partitioner, trainer, broker evaluation) can trust it.
        x, y = self.x, self.y
        if x.dtype != np.float32 or x.ndim != 2:
            raise DataError(f"{self.name}: x must be float32 of shape (N, F), got {x.dtype} {x.shape}")
        if y.dtype != np.int32 or y.shape != (x.shape[0],):
            raise DataError(f"{self.name}: y must be int32 of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if int(np.prod(self.input_shape, dtype=np.int64)) != x.shape[1]:
            raise DataError(
                f"{self.name}: input_shape {self.input_shape} does not hold {x.shape[1]} features"
            )
        if self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(f"{self.name}: labels must be in 0..{self.num_classes - 1}")
        devices = self.devices
        if devices is not None and (devices.dtype != np.int32 or devices.shape != y.shape
                                    or (len(devices) and int(devices.min()) < 0)):
            raise DataError(f"{self.name}: devices must be int32 of shape ({len(y)},) with values >= 0")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, indices: np.ndarray, *, name: str | None = None) -> Dataset:
        """The samples at ``indices`` (e.g. one client's partition), keeping classes and input shape."""
        return Dataset(
            x=self.x[indices],
            y=self.y[indices],
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            name=self.name if name is None else name,
            devices=None if self.devices is None else self.devices[indices],
        )


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    """Load a dataset by spec and return ``(train, test)``.

    ``spec`` is one of the specs in the module docstring. The split is stratified by label and
    deterministic from ``seed``; ``test_fraction`` (0 < f < 1) is ignored for ``npz:DIR`` when the directory
    has its own ``test.npz``, and for the published benchmarks, which have their own split. Raises
    :class:`DataError` for an unknown spec or a malformed file.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_dataset_spec(spec)
    if spec == "mnist1d" or spec.startswith("mnist1d:"):
        return _mnist1d(spec)
    if spec.startswith("leaf-synthetic:"):
        return _leaf_synthetic(spec, seed)
    if spec == "digits":
        x, y = _digits_arrays()
        return _split(x, y, 10, (8, 8, 1), "digits", seed, test_fraction)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        x, y = _synthetic_arrays(seed, _parse_synthetic(spec))
        return _split(x, y, _SYNTH_CLASSES, (_SYNTH_FEATURES,), spec, seed, test_fraction)
    if spec.startswith("npz:") and len(spec) > len("npz:"):
        directory = Path(spec[len("npz:") :])
        train, test = _load_npz_dir(directory, num_classes=None, name=spec)
        if test is not None:
            return train, test
        return _split(train.x, train.y, train.num_classes, train.input_shape, spec, seed, test_fraction)
    raise DataError(f"unknown dataset {spec!r}; allowed: {_DATASET_SPECS}")


def check_dataset_spec(spec: str) -> None:
    """Raise :class:`DataError` naming the allowed specs unless ``spec`` is well formed (nothing is loaded:
    a directory is checked when it is read)."""
    if not isinstance(spec, str):
        raise DataError(f"dataset spec must be a string, got {spec!r}")
    if spec == "mnist1d" or spec.startswith("mnist1d:"):
        published.parse_mnist1d(spec)
    elif spec.startswith("leaf-synthetic:"):
        published.parse_leaf_synthetic(spec)
    elif spec.startswith("synthetic:"):
        _parse_synthetic(spec)
    elif spec not in ("digits", "synthetic") and not (spec.startswith("npz:") and len(spec) > len("npz:")):
        raise DataError(f"unknown dataset {spec!r}; allowed: {_DATASET_SPECS}")


def load_client_dir(path: str | Path, *, num_classes: int | None = None) -> tuple[Dataset, Dataset | None]:
    """Load a worker's own data directory (``flworker --data-path DIR``): ``(train, test or None)``.

    See the module docstring for the format. Pass ``num_classes`` (the federation's model output size) to
    check the labels against it; otherwise it is inferred as the largest label + 1, which may be smaller than
    the federation's if this worker lacks the top classes. Raises :class:`DataError` naming the bad file.
    """
    directory = Path(path)
    return _load_npz_dir(directory, num_classes=num_classes, name=str(directory))


# --------------------------------------------------------------------------------------------- splitting


def _split(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    input_shape: tuple[int, ...],
    name: str,
    seed: int,
    test_fraction: float,
) -> tuple[Dataset, Dataset]:
    """Stratified split: each class contributes round(n_c * test_fraction) samples to the test set."""
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_test = round(len(members) * test_fraction)
        test_parts.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    train_idx = np.flatnonzero(train_mask)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{name}: {len(y)} samples are too few to split with test_fraction={test_fraction}")
    # Fancy indexing copies, so callers never share (or mutate) the cached digits arrays.
    return (
        Dataset(x[train_idx], y[train_idx], num_classes, input_shape, f"{name}/train"),
        Dataset(x[test_idx], y[test_idx], num_classes, input_shape, f"{name}/test"),
    )


# ------------------------------------------------------------------------------------------------ digits


def _digits_path() -> Path:
    """The path of scikit-learn's bundled ``digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if candidate.is_file():
            return candidate
    raise DataError(
        "dataset 'digits' needs scikit-learn installed (its bundled datasets/data/digits.csv.gz); "
        f"searched {locations or 'nowhere: sklearn is not installed'}"
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Parse digits once per process (many virtual clients share a process); arrays are read-only."""
    path = _digits_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot parse digits: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns (64 pixels + label), got shape {table.shape}")
    x = table[:, :64] / np.float32(16.0)
    y = table[:, 64].astype(np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


# --------------------------------------------------------------------------------------------- synthetic

_SYNTH_SAMPLES = 4000
#: Upper bound on ``synthetic:N`` (256 MiB of float32 features).
SYNTHETIC_MAX_SAMPLES = 2_000_000
_SYNTH_CLASSES = 10
_SYNTH_FEATURES = 32
_SYNTH_LATENT = 8
_SYNTH_CLUSTERS = 2
# Spread of cluster centres relative to unit within-cluster noise; tuned so a 64-128-10 MLP gets roughly
# 80-90% test accuracy: learnable, yet with room for federated settings to show a difference.
_SYNTH_SEPARATION = 1.6


def _parse_synthetic(spec: str) -> int:
    """``"synthetic"`` -> 4,000, ``"synthetic:N"`` -> N. Raises DataError naming the allowed values."""
    if spec == "synthetic":
        return _SYNTH_SAMPLES
    value = spec.removeprefix("synthetic:")
    if value.isdigit() and 10 <= int(value) <= SYNTHETIC_MAX_SAMPLES:
        return int(value)
    raise DataError(f"dataset {spec!r}: allowed: \"synthetic\" or \"synthetic:N\" with 10 <= N <= "
                    f"{SYNTHETIC_MAX_SAMPLES:,}")


def _synthetic_arrays(seed: int, samples: int = _SYNTH_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian mixture: balanced labels, two clusters per class in a latent space, linearly embedded."""
    # A separate stream from the split's so the problem and the split do not share random numbers.
    rng = np.random.default_rng([seed, 0x5EED])
    centres = rng.normal(0.0, _SYNTH_SEPARATION, size=(_SYNTH_CLASSES, _SYNTH_CLUSTERS, _SYNTH_LATENT))
    y = rng.permutation(np.arange(samples) % _SYNTH_CLASSES)
    cluster = rng.integers(0, _SYNTH_CLUSTERS, size=samples)
    latent = centres[y, cluster] + rng.normal(size=(samples, _SYNTH_LATENT))
    # A random orthonormal embedding plus small isotropic noise: features are correlated, as in real data.
    embed, _ = np.linalg.qr(rng.normal(size=(_SYNTH_FEATURES, _SYNTH_LATENT)))
    x = latent @ embed.T + 0.1 * rng.normal(size=(samples, _SYNTH_FEATURES))
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y.astype(np.int32)


# ------------------------------------------------------------------------------------ published benchmarks


def _mnist1d(spec: str) -> tuple[Dataset, Dataset]:
    """The package's own split; copies, so callers never share (or mutate) the cached arrays."""
    x_train, y_train, x_test, y_test = published.mnist1d_arrays(published.parse_mnist1d(spec))
    features = x_train.shape[1]
    return (
        Dataset(x_train.copy(), y_train.copy(), 10, (features,), f"{spec}/train"),
        Dataset(x_test.copy(), y_test.copy(), 10, (features,), f"{spec}/test"),
    )


def _leaf_synthetic(spec: str, seed: int) -> tuple[Dataset, Dataset]:
    """Each device's held-out 10% is the test set; samples keep their device for the natural partition."""
    data = published.leaf_synthetic(*published.parse_leaf_synthetic(spec), seed=seed)
    features = data.x.shape[1]

    def part(mask: np.ndarray, role: str) -> Dataset:
        return Dataset(data.x[mask], data.y[mask], data.num_classes, (features,), f"{spec}/{role}",
                       devices=data.device[mask])

    return part(~data.test, "train"), part(data.test, "test")


# ------------------------------------------------------------------------------------------- npz files


def _load_npz_dir(directory: Path, *, num_classes: int | None, name: str) -> tuple[Dataset, Dataset | None]:
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected DIR/train.npz and optionally DIR/test.npz)")
    x_train, y_train = _read_npz(directory / "train.npz", num_classes)
    test_path = directory / "test.npz"
    test_arrays = _read_npz(test_path, num_classes) if test_path.exists() else None
    if test_arrays is not None and test_arrays[0].shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{test_path}: per-sample shape {test_arrays[0].shape[1:]} differs from "
            f"train.npz's {x_train.shape[1:]}"
        )
    if num_classes is None:
        top = max(int(y_train.max()), int(test_arrays[1].max()) if test_arrays is not None else -1)
        num_classes = top + 1
    input_shape = _input_shape(x_train.shape)
    train = Dataset(x_train.reshape(len(x_train), -1), y_train, num_classes, input_shape, f"{name}/train")
    if test_arrays is None:
        return train, None
    x_test, y_test = test_arrays
    test = Dataset(x_test.reshape(len(x_test), -1), y_test, num_classes, input_shape, f"{name}/test")
    return train, test


def _input_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample model input shape: greyscale (N, H, W) images get a channel axis for NHWC convs."""
    per_sample = tuple(shape[1:])
    return per_sample + (1,) if len(per_sample) == 2 else per_sample


def _read_npz(path: Path, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate ``x`` (float32, unflattened) and ``y`` (int32) from one ``.npz`` file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (a data directory needs train.npz)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, expected an .npz archive with arrays 'x' and 'y'")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {missing}; found {sorted(archive.files)}")
        try:
            x_raw, y_raw = archive["x"], archive["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            # allow_pickle=False turns object arrays into a ValueError here, which is what we want.
            raise DataError(f"{path}: cannot read arrays: {exc}") from exc
    return _validate_x(path, x_raw), _validate_y(path, y_raw, len(x_raw), num_classes)


def _validate_x(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "fiu":
        raise DataError(f"{path}: x must be a float or integer array, got dtype {x.dtype}")
    if not 2 <= x.ndim <= 4:
        raise DataError(f"{path}: x must have shape (N, F), (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"{path}: x is empty, shape {x.shape}")
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / np.float32(255.0)
    else:
        out = x.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{path}: x contains NaN or infinite values (or values beyond float32 range)")
    return out


def _validate_y(path: Path, y: np.ndarray, n: int, num_classes: int | None) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise DataError(f"{path}: y must have shape ({n},) to match x, got {y.shape}")
    low, high = int(y.min()), int(y.max())
    limit = MAX_CLASSES if num_classes is None else num_classes
    if low < 0 or high >= limit:
        raise DataError(f"{path}: labels must be in 0..{limit - 1}, found values in {low}..{high}")
    return y.astype(np.int32)

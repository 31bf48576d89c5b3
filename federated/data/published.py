"""Published benchmark data sets, generated on this machine: MNIST-1D and LEAF/FedProx Synthetic(α, β).

Both come from their authors' recipes and nothing is downloaded.

``mnist1d`` / ``mnist1d:N``: MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML
2024) through its reference generator, the ``mnist1d`` package: ``mnist1d.data.make_dataset`` with the
package's default arguments (:func:`mnist1d.data.get_dataset_args`), which is the canonical data set: 5,000
signals of length 40 from ten 1-D digit templates (padded, scaled, translated, sheared, noised; package seed
42), split by the package 80/20 into 4,000 train and 1,000 test. ``mnist1d:N`` changes only ``num_samples``
(N a multiple of 10: the generator makes N / 10 per class), keeping the recipe, the package's seed and its
split. The package's download and pickle loader (``get_dataset``) are never called.

``leaf-synthetic:ALPHA,BETA[,DEVICES]``: Synthetic(α, β) of Li et al. ("Federated Optimization in
Heterogeneous Networks", MLSys 2020, §5.1, and ``data/synthetic_*/generate_synthetic.py`` of their code),
with DEVICES devices (default 30, theirs). Device k has its own model and its own feature distribution::

    u_k ~ N(0, α)       W_k ~ N(u_k, 1)  (60 x 10)     b_k ~ N(u_k, 1)  (10)
    B_k ~ N(0, β)       v_k ~ N(B_k, 1)  (60)          x ~ N(v_k, Σ),  Σ = diag(j^-1.2), j = 1..60
    y = argmax softmax(W_k^T x + b_k)                    n_k = floor(lognormal(4, 2)) + 50 samples

(α and β are the standard deviations of the normal draws, as ``np.random.normal(0, alpha)`` in their code.)
Device sizes are power-law, as theirs. As in their code, each device's samples are shuffled and the last
10% (``n_k - int(0.9 n_k)``) held out as that device's test samples; the test set is the union. Everything
is drawn from one NumPy generator seeded with the run's seed, so the same seed gives the same federation.

NumPy only at import time: ``mnist1d`` (which imports SciPy and matplotlib, about a second) is imported
when MNIST-1D is asked for. Spec problems raise :class:`~federated.data.errors.DataError` naming the spec.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.data.errors import DataError

__all__ = [
    "LEAF_DEFAULT_DEVICES",
    "LEAF_MAX_DEVICES",
    "MNIST1D_MAX_SAMPLES",
    "LeafSynthetic",
    "leaf_synthetic",
    "mnist1d_arrays",
    "parse_leaf_synthetic",
    "parse_mnist1d",
]

#: Devices of ``leaf-synthetic:ALPHA,BETA`` when the spec does not say: the paper's 30.
LEAF_DEFAULT_DEVICES = 30
#: Upper bound on DEVICES: the mean device holds about 450 samples (e^6 + 50), so 10,000 devices are
#: about 4.5 million samples (1 GiB of float32 features).
LEAF_MAX_DEVICES = 10_000
#: Upper bound on ``mnist1d:N``; the generator makes about 5,000 signals a second on one core.
MNIST1D_MAX_SAMPLES = 1_000_000

_MNIST1D_SPEC = '"mnist1d" or "mnist1d:N" (N a multiple of 10, 10 <= N <= 1,000,000)'
_LEAF_SPEC = '"leaf-synthetic:ALPHA,BETA" or "leaf-synthetic:ALPHA,BETA,DEVICES" (ALPHA, BETA >= 0; ' \
    f'1 <= DEVICES <= {LEAF_MAX_DEVICES:,})'

_LEAF_FEATURES = 60
_LEAF_CLASSES = 10
_LEAF_TRAIN_SHARE = 0.9  # their generate_synthetic.py: train_len = int(0.9 * num_samples)


# ----------------------------------------------------------------------------------------------- MNIST-1D


def parse_mnist1d(spec: str) -> int | None:
    """``"mnist1d"`` -> ``None`` (the canonical set), ``"mnist1d:N"`` -> N. Raises DataError otherwise."""
    if spec == "mnist1d":
        return None
    _, _, value = spec.partition(":")
    if value.isdigit() and int(value) % 10 == 0 and 10 <= int(value) <= MNIST1D_MAX_SAMPLES:
        return int(value)
    raise DataError(f"dataset {spec!r}: allowed: {_MNIST1D_SPEC}")


# make_dataset seeds NumPy's and Python's global generators (mnist1d.utils.set_seed) and draws from them:
# one generation at a time, with both states put back afterwards, so loading data never reseeds a process.
_GLOBAL_RNG_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def mnist1d_arrays(num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D as ``(x_train, y_train, x_test, y_test)``: float32 (N, 40) and int32 (N,), read-only.

    ``num_samples`` ``None`` is the canonical set (4,000 / 1,000). Generated once per process and cached
    (many virtual clients share a process). NumPy's and ``random``'s global states are restored.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args: Any = get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    with _GLOBAL_RNG_LOCK:
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
    arrays = (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int32),
              np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int32))
    for array in arrays:
        array.flags.writeable = False
    return arrays


# ----------------------------------------------------------------------------------- LEAF Synthetic(α, β)


@dataclass(frozen=True)
class LeafSynthetic:
    """One Synthetic(α, β) federation: every sample's features, label, device and train/test role.

    ``x`` float32 (N, 60); ``y`` int32 (N,) in 0..9; ``device`` int32 (N,) in 0..devices-1, samples grouped
    by device in order; ``test`` bool (N,), the held-out 10% of each device.
    """

    x: np.ndarray
    y: np.ndarray
    device: np.ndarray
    test: np.ndarray
    devices: int
    num_classes: int = 10


def parse_leaf_synthetic(spec: str) -> tuple[float, float, int]:
    """``"leaf-synthetic:ALPHA,BETA[,DEVICES]"`` -> ``(alpha, beta, devices)``. Raises DataError."""
    _, _, value = spec.partition(":")
    fields = value.split(",")
    if len(fields) in (2, 3):
        try:
            alpha, beta = float(fields[0]), float(fields[1])
            devices = int(fields[2]) if len(fields) == 3 else LEAF_DEFAULT_DEVICES
        except ValueError:
            pass
        else:
            if all(math.isfinite(v) and v >= 0 for v in (alpha, beta)) and 1 <= devices <= LEAF_MAX_DEVICES:
                return alpha, beta, devices
    raise DataError(f"dataset {spec!r}: allowed: {_LEAF_SPEC}")


def leaf_synthetic(alpha: float, beta: float, devices: int, seed: int) -> LeafSynthetic:
    """Generate Synthetic(``alpha``, ``beta``) over ``devices`` devices, deterministic from ``seed``.

    The draws follow the reference generator's order (sizes, u, B, v, then per device W, b, x); the
    generator is NumPy's PCG64 seeded with ``seed``, not their global ``np.random``, so the values differ
    from their JSON files while the distribution is the same.
    """
    rng = np.random.default_rng([seed, 0x1EAF])
    sizes = rng.lognormal(4.0, 2.0, devices).astype(np.int64) + 50
    model_mean = rng.normal(0.0, alpha, devices)  # u_k, the mean of W_k and of b_k
    feature_centre = rng.normal(0.0, beta, devices)  # B_k
    feature_mean = rng.normal(feature_centre[:, None], 1.0, (devices, _LEAF_FEATURES))  # v_k
    feature_std = np.arange(1, _LEAF_FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    xs, ys, tests = [], [], []
    for k in range(devices):
        weights = rng.normal(model_mean[k], 1.0, (_LEAF_FEATURES, _LEAF_CLASSES))
        bias = rng.normal(model_mean[k], 1.0, _LEAF_CLASSES)
        x = feature_mean[k] + feature_std * rng.standard_normal((int(sizes[k]), _LEAF_FEATURES))
        # softmax is monotonic: argmax of the logits is argmax of softmax, without exp overflowing.
        y = np.argmax(x @ weights + bias, axis=1)
        test = np.zeros(len(y), dtype=bool)
        test[rng.permutation(len(y))[int(_LEAF_TRAIN_SHARE * len(y)):]] = True
        xs.append(x)
        ys.append(y)
        tests.append(test)
    device = np.repeat(np.arange(devices, dtype=np.int32), sizes)
    return LeafSynthetic(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32), device,
                         np.concatenate(tests), devices)

"""Datasets (built-in digits and synthetic, published benchmarks, user npz directories) and partitioners.

NumPy only: this package must not import scikit-learn (seconds of import time) or MLX (the broker loads
data for evaluation without MLX).
"""

from __future__ import annotations

from federated.data.datasets import MAX_CLASSES, Dataset, check_dataset_spec, load_client_dir, load_dataset
from federated.data.errors import DataError
from federated.data.partition import MAX_DIRICHLET_DRAWS, parse_partition, partition, partition_dataset

__all__ = [
    "MAX_CLASSES",
    "MAX_DIRICHLET_DRAWS",
    "DataError",
    "Dataset",
    "check_dataset_spec",
    "load_client_dir",
    "load_dataset",
    "parse_partition",
    "partition",
    "partition_dataset",
]

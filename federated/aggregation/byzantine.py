"""The seed README's Byzantine-tolerance API: a façade over :mod:`robust` and :mod:`detection`.

Works on per-worker updates as mappings of tensor name to array (numpy, MLX or anything
``np.asarray`` accepts). Each update is flattened in sorted tensor-name order into one row of an
(n, d) float32 matrix, the rule runs on the matrix, and the result is cut back into tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from federated.aggregation.detection import DEFAULT_THRESHOLD, Detection, detect_byzantine_clients
from federated.aggregation.fedavg import check_compatible
from federated.aggregation.robust import make_rule
from federated.aggregation.rule import Rule

__all__ = ["ByzantineTolerantAggregator"]

Update = Mapping[str, Any]


def _stack(client_updates: Sequence[Update]) -> tuple[np.ndarray, list[tuple[str, tuple[int, ...]]]]:
    """The (n, d) float32 matrix of flattened updates and the (name, shape) layout of a row."""
    if not client_updates:
        raise ValueError("no client updates to aggregate")
    arrays = [{name: np.asarray(value) for name, value in update.items()} for update in client_updates]
    for update in arrays[1:]:
        check_compatible(arrays[0], update)
    layout = [(name, arrays[0][name].shape) for name in sorted(arrays[0])]
    sizes = [math.prod(shape) for _, shape in layout]
    matrix = np.empty((len(arrays), sum(sizes)), dtype=np.float32)
    for row, update in zip(matrix, arrays):
        offset = 0
        for (name, _), size in zip(layout, sizes):
            row[offset:offset + size] = update[name].reshape(-1)
            offset += size
    return matrix, layout


class ByzantineTolerantAggregator:
    """Robust aggregation and detection of per-worker updates with one of :data:`RULES`.

    ``f`` is the number of Byzantine workers to tolerate; when None it is ``floor(trim_ratio * n)``
    for each call's cohort of n. ``trim_ratio`` and ``rule_kwargs`` go to :func:`make_rule`.
    ``detection_threshold`` is the score above which a worker is suspected. Raises ``ValueError`` for
    an unknown strategy or a bad parameter.
    """

    def __init__(self, strategy: str = "trimmed_mean", trim_ratio: float = 0.1, f: int | None = None,
                 **rule_kwargs: Any) -> None:
        make_rule(strategy, f=0 if f is None else f, trim_ratio=trim_ratio, **rule_kwargs)  # validates
        self.strategy = strategy
        self.trim_ratio = trim_ratio
        self.f = f
        self.rule_kwargs = rule_kwargs
        self.detection_threshold = DEFAULT_THRESHOLD
        self.last_detection: Detection | None = None

    def rule(self, n: int) -> Rule:
        """The configured rule for a cohort of ``n`` updates."""
        f = math.floor(self.trim_ratio * n) if self.f is None else self.f
        return make_rule(self.strategy, f=f, trim_ratio=self.trim_ratio, **self.rule_kwargs)

    def detect_byzantine_clients(self, client_updates: Sequence[Update]) -> list[int]:
        """Indices of the suspected updates; the full :class:`Detection` (ids are the indices as
        strings) is kept in ``last_detection``. Raises ``ValueError`` for no updates, mismatched
        tensors or non-finite values."""
        matrix, _ = _stack(client_updates)
        self.last_detection = detect_byzantine_clients(
            matrix, [str(i) for i in range(len(matrix))], threshold=self.detection_threshold)
        return [int(i) for i in self.last_detection.suspects]

    def aggregate(self, client_updates: Sequence[Update]) -> dict[str, np.ndarray]:
        """The robust aggregate as float32 tensors with the input names and shapes.

        Raises ``ValueError`` for no updates, mismatched tensors, non-finite values or a cohort too
        small for the rule at its f.
        """
        matrix, layout = _stack(client_updates)
        flat = self.rule(len(matrix))(matrix).astype(np.float32)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in layout:
            size = math.prod(shape)
            out[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        return out

    def __repr__(self) -> str:
        extra = "".join(f", {key}={value!r}" for key, value in self.rule_kwargs.items())
        return (f"ByzantineTolerantAggregator(strategy={self.strategy!r}, trim_ratio={self.trim_ratio}, "
                f"f={self.f}{extra})")

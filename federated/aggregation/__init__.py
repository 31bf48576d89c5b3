"""Aggregation of worker updates: FedAvg, server optimizers, Byzantine-robust rules and detection.

numpy in, numpy out. Where things are:

- ``fedavg``: weighted mean of per-tensor updates, and the ``"mean"`` rule; ``server_opt``: server steps.
- ``rule``: the :class:`Rule` interface and the checks every rule shares; ``blocks``: column blocks and
  BLAS threads. ``robust``: :data:`RULES` and :func:`make_rule`, the registry; the rules live in
  ``coordinate`` (median, trimmed mean), ``distance`` (Krum, Multi-Krum, Bulyan), ``geomed``
  (geometric median) and ``clipping`` (centered clipping, norm bounding); ``bucketing`` wraps any rule.
- ``detection``: outlier scores that flag suspicious workers, calibrated by ``outliers`` (robust z-scores
  and how rare each is among honest workers).
- ``byzantine``: the seed README's :class:`ByzantineTolerantAggregator` façade over all of the above.
"""

from federated.aggregation.bucketing import Bucketing, bucket_means
from federated.aggregation.byzantine import ByzantineTolerantAggregator
from federated.aggregation.detection import Detection, detect_byzantine_clients
from federated.aggregation.fedavg import check_compatible, weighted_mean
from federated.aggregation.robust import RULES, make_rule
from federated.aggregation.rule import Rule
from federated.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    AdaptiveServer,
    FedAvgServer,
    ServerOptimizer,
    make_server_optimizer,
)

__all__ = [
    "RULES",
    "SERVER_OPTIMIZERS",
    "AdaptiveServer",
    "Bucketing",
    "ByzantineTolerantAggregator",
    "Detection",
    "FedAvgServer",
    "Rule",
    "ServerOptimizer",
    "bucket_means",
    "check_compatible",
    "detect_byzantine_clients",
    "make_rule",
    "make_server_optimizer",
    "weighted_mean",
]

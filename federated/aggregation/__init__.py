"""Aggregation of worker updates: FedAvg, server optimizers. numpy in, numpy out."""

from federated.aggregation.fedavg import check_compatible, weighted_mean
from federated.aggregation.server_opt import FedAvgServer, ServerOptimizer

__all__ = ["FedAvgServer", "ServerOptimizer", "check_compatible", "weighted_mean"]

"""The worker: DEALER loop (I/O driver), local MLX trainer, and the glue between them.

Importing this package does not import MLX; ``federated.worker.trainer`` and ``federated.worker.runner`` do.
"""

from federated.worker.loop import ClientData, FitFunction, WorkerLoop, task_seed

__all__ = ["ClientData", "FitFunction", "WorkerLoop", "task_seed"]

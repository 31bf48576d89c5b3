"""The worker: a protocol session without sockets, the DEALER loop that drives it, what happens to an
update after training (payload), the local MLX trainer, and simulation-only behaviour.

Importing this package does not import MLX; ``federated.worker.trainer`` and ``federated.worker.runner`` do.
"""

from federated.worker.loop import WorkerLoop
from federated.worker.session import ClientData, FitFunction, WorkerSession, task_seed

__all__ = ["ClientData", "FitFunction", "WorkerLoop", "WorkerSession", "task_seed"]

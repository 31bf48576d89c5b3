"""Entry point of ``fl simulate``'s worker processes (internal; not a user command).

``python -m federated.cli.simworker --server-address A --shards 0,2,4 ...`` runs the given shards as
virtual clients in one process, through the same :class:`~federated.worker.loop.WorkerLoop` and model
runner as ``flworker``: only where the data comes from differs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from federated.cli.options import setup_logging
from federated.cli.simulate import speed_factors
from federated.cli.worker import load_shards, run_worker

F = TypeVar("F", bound=Callable[..., Any])

_SHARD_OPTIONS = [
    click.option("--server-address", required=True),
    click.option("--dataset", required=True),
    click.option("--partition", required=True),
    click.option("--num-shards", type=int, required=True),
    click.option("--shards", required=True, help="Comma-separated shard indices to host."),
    click.option("--seed", type=int, required=True),
    click.option("--model", required=True),
    click.option("-v", "--verbose", count=True),
]


def shard_options(func: F) -> F:
    """The options every simulated-worker process takes (honest ones and the attackers' alike)."""
    for option in reversed(_SHARD_OPTIONS):
        func = option(func)
    return func


@click.command()
@shard_options
@click.option("--dropout", type=float, default=0.0)
@click.option("--dropout-stage", default="task")
@click.option("--stragglers", type=float, default=0.0)
@click.option("--heterogeneity", is_flag=True)
@click.option("--connection-per-client", is_flag=True)
def main(server_address: str, dataset: str, partition: str, num_shards: int, shards: str, seed: int,
         model: str, dropout: float, dropout_stage: str, stragglers: float, heterogeneity: bool,
         connection_per_client: bool, verbose: int) -> None:
    setup_logging(verbose, quiet=True)
    indices = [int(s) for s in shards.split(",") if s]
    clients = load_shards(dataset, partition, num_shards, indices, seed)
    slowdown = speed_factors(num_shards, seed) if heterogeneity else None
    # A simulation's broker is the experimenter's own process: workers derive their local randomness
    # (training seed, secure rounding, distributed noise) from the run's seed, so a run is reproducible.
    # Real workers (flworker) draw it from the OS: see federated.worker.randomness.
    from federated.worker.randomness import LocalRandomness

    randomness = {c.worker_id: LocalRandomness.seeded(seed, c.worker_id) for c in clients}
    sys.exit(run_worker(clients, server_address, model, dropout_rate=dropout, dropout_stage=dropout_stage,
                        straggler_rate=stragglers, slowdown=slowdown, randomness=randomness,
                        share_connection=not connection_per_client))


if __name__ == "__main__":
    main()

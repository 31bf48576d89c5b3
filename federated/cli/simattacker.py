"""Entry point of ``fl simulate``'s attacker process (internal; not a user command).

All Byzantine clients of a simulation live in this one process, so they can collude, and their
behaviour comes from :mod:`federated.attacks`; they talk to the broker through the same
:class:`~federated.worker.loop.WorkerLoop` as honest workers. Honest worker processes never import the
attacks package.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from federated.cli.options import setup_logging
from federated.cli.simworker import shard_options
from federated.cli.worker import load_shards


@click.command()
@shard_options
@click.option("--attack", required=True)
def main(server_address: str, dataset: str, partition: str, num_shards: int, shards: str, seed: int, model: str,
         attack: str, verbose: int) -> None:
    from federated.attacks import ColludingAttackers
    from federated.data import load_dataset
    from federated.worker.loop import WorkerLoop
    from federated.worker.runner import ModelRunner

    setup_logging(verbose, quiet=True)
    clients = load_shards(dataset, partition, num_shards, [int(s) for s in shards.split(",") if s], seed)
    num_classes = load_dataset(dataset, seed=seed)[1].num_classes
    attackers = ColludingAttackers(attack, clients, ModelRunner(trusted_spec=model).fit, num_workers=num_shards,
                                   num_classes=num_classes, seed=seed)
    loop = WorkerLoop(clients, server_address, attackers.fit, share_connection=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        loop.stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    sys.exit(loop.run())


if __name__ == "__main__":
    main()

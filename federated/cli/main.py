"""``fl``: the command-line entry point (a click group)."""

from __future__ import annotations

import click

from federated.cli.baseline import baseline_command
from federated.cli.broker import broker_command
from federated.cli.rounds import rounds
from federated.cli.simulate import simulate_command
from federated.cli.worker import worker_command

__all__ = ["fl"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="federated")
def fl() -> None:
    """Privacy-preserving federated learning for small MLX models over ZeroMQ."""


fl.add_command(simulate_command)
fl.add_command(baseline_command)
fl.add_command(broker_command)
fl.add_command(worker_command)
fl.add_command(rounds)

if __name__ == "__main__":
    fl()

"""``fl``: the command-line entry point (a click group).

Subcommands are imported only when invoked: ``fl simulate`` must not pay for numpy, MLX or SQLite in
the parent process, whose start-up is on the critical path of every simulation.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["fl"]

#: command name -> "module:attribute" of its click command.
COMMANDS = {
    "simulate": "federated.cli.simulate:simulate_command",
    "baseline": "federated.cli.baseline:baseline_command",
    "broker": "federated.cli.broker:broker_command",
    "worker": "federated.cli.worker:worker_command",
    "rounds": "federated.cli.rounds:rounds",
    "model": "federated.cli.model:model",
    "keys": "federated.cli.keys:keys",
    "privacy": "federated.cli.privacy:privacy",
}


class _LazyGroup(click.Group):
    """A click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: Any = getattr(importlib.import_module(module), attr)
        return command  # type: ignore[no-any-return]


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="federated")
def fl() -> None:
    """Privacy-preserving federated learning for small MLX models over ZeroMQ."""


if __name__ == "__main__":
    fl()

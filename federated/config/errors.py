"""The configuration's error.

::

    ValueError
     └── ConfigError    a setting is invalid: ``field`` is its dotted name (``training.momentum``,
                        ``train.epochs`` in a TASK, ``--config`` for the file itself); the message says
                        which values are allowed

The CLI turns a ConfigError into exit code 2 (``federated.cli.exit_codes.CONFIG_ERROR``); a worker answers
a TASK whose settings raise it with ERROR ``bad_task``.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` is its dotted name; the message lists allowed values."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name

"""The project's own processes as the benchmarks start them: the ``fl`` command line (``fl broker``,
``fl simulate``), the simulated-clients worker process (``federated.cli.simworker``), the config of a
small job on loopback, and the JSON line ``--json`` runs print last. ``procs`` runs them.
Imported as ``flcli`` when a benchmark runs as ``python benchmarks/NAME.py``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["FL", "broker_command", "flag_list", "last_json", "simulate_command", "simworker_command",
           "write_digits_config"]

#: ``fl`` run by this interpreter (as ``python -m``, so no installed script is needed).
FL: tuple[str, ...] = (sys.executable, "-m", "federated.cli.main")


def broker_command(config: Path, *, verbose: bool = False) -> list[str]:
    """``fl broker --config CONFIG --events [-v]``: a broker that prints its round events as JSON lines."""
    return [*FL, "broker", "--config", str(config), "--events", *(["-v"] if verbose else [])]


def simworker_command(port: int, *, num_shards: int, shards: Iterable[int], seed: int,
                      extra: Iterable[str] = ()) -> list[str]:
    """One worker process (the kind ``fl simulate`` starts) hosting the clients of the digits/iid/mlp shards
    ``shards`` out of ``num_shards``, connecting to 127.0.0.1:``port``; ``extra`` flags go last."""
    return [sys.executable, "-m", "federated.cli.simworker", "--server-address", f"127.0.0.1:{port}",
            "--dataset", "digits", "--partition", "iid", "--num-shards", str(num_shards),
            "--shards", ",".join(map(str, shards)), "--seed", str(seed), "--model", "mlp", *extra]


def write_digits_config(path: Path, *, port: int, store: Path, num_clients: int, clients_per_round: int,
                        min_clients: int, num_rounds: int, seed: int, local_epochs: int,
                        round_timeout_s: float, start_timeout_s: float, heartbeat_timeout_s: float,
                        max_failed_rounds: int, heartbeat_interval_s: float = 0.5) -> Path:
    """Write (YAML) the config of a digits/iid/mlp job whose broker binds tcp://127.0.0.1:``port`` and keeps
    its store in ``store``; timeouts and intervals in seconds. Returns ``path``."""
    config = {
        "num_clients": num_clients, "clients_per_round": clients_per_round, "min_clients": min_clients,
        "num_rounds": num_rounds, "seed": seed, "dataset": "digits", "partition": "iid", "model": "mlp",
        "training": {"local_epochs": local_epochs},
        "broker": {"bind": f"tcp://127.0.0.1:{port}", "store": str(store), "round_timeout_s": round_timeout_s,
                   "start_timeout_s": start_timeout_s, "heartbeat_interval_s": heartbeat_interval_s,
                   "heartbeat_timeout_s": heartbeat_timeout_s, "max_failed_rounds": max_failed_rounds},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def simulate_command(store: Path, *flags: str) -> list[str]:
    """``fl simulate --json --store STORE FLAGS...``: a whole run whose result is the last stdout line."""
    return [*FL, "simulate", "--json", "--store", str(store), *flags]


def flag_list(flags: Mapping[str, str]) -> list[str]:
    """``{"--flag": "value", ...}`` as ``["--flag", "value", ...]``, in the mapping's order."""
    return [part for flag, value in flags.items() for part in (flag, value)]


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object on the last line of a ``--json`` run's stdout.

    Raises ``IndexError`` if there is no line and ``json.JSONDecodeError`` if it is not JSON."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result

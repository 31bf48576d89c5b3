"""``flworker`` / ``fl worker``: hold private data, train locally, answer the broker's rounds.

Data comes either from ``--data-path DIR`` (the worker's own ``train.npz``; format in
:mod:`federated.data.datasets`) or, for demonstrations, from shard ``--shard I`` of a built-in data set
split ``--num-shards`` ways with ``--partition``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click
import numpy as np

from federated.cli.exit_codes import CONFIG_ERROR, INTERRUPTED
from federated.cli.options import setup_logging
from federated.config import ClientConfig, ConfigError

__all__ = ["load_shards", "own_data", "run_worker", "worker_command"]


def load_shards(dataset: str, partition_spec: str, num_shards: int, shards: Sequence[int], seed: int,
                prefix: str = "client_") -> list[Any]:
    """ClientData for ``shards`` of ``dataset``'s training split partitioned ``num_shards`` ways, each
    with its share of the test split as its held-out evaluation split (federated evaluation).

    Every process computes the same deterministic partition from ``seed``, so shards never overlap. The
    test split is cut IID (by device for ``natural``); a shard may get no held-out examples when there
    are fewer than shards, and then takes no part in federated evaluation.
    Raises DataError (a ValueError) for a bad data set or partition.
    """
    from federated.data import DataError, load_dataset, partition, partition_dataset
    from federated.worker.loop import ClientData

    train, test = load_dataset(dataset, seed=seed)
    parts = partition_dataset(train, num_shards, partition_spec, seed=seed)
    try:
        natural = partition_spec == "natural" and test.devices is not None
        held = (partition_dataset(test, num_shards, "natural", seed=seed, min_samples=0) if natural
                else partition(test.y, num_shards, "iid", seed=seed, min_samples=0))
    except DataError:
        held = [np.zeros(0, dtype=np.int64)] * num_shards
    return [ClientData(f"{prefix}{i}", train.x[parts[i]], train.y[parts[i]], test.x[held[i]], test.y[held[i]])
            for i in shards]


def own_data(client_id: str, data_path: str, holdout: float) -> Any:
    """One worker's ClientData from its own directory: ``train.npz`` to train on, and ``test.npz`` (or,
    without it, a ``holdout`` share of ``train.npz`` drawn at random and kept aside) to score global
    models on. Raises DataError for unreadable or malformed files, or a holdout that leaves nothing."""
    import logging
    import secrets

    from federated.data import DataError, load_client_dir
    from federated.worker.loop import ClientData

    train, test = load_client_dir(data_path)
    if test is not None:
        return ClientData(client_id, train.x, train.y, test.x, test.y)
    kept = int(holdout * len(train.y))
    if kept == 0:
        logging.getLogger("federated.worker").info(
            "%s: no test.npz in %s and no --holdout: this worker does not score global models", client_id,
            data_path)
        return ClientData(client_id, train.x, train.y)
    if len(train.y) - kept < 1:
        raise DataError(f"--holdout {holdout:g} leaves no training examples in {data_path}")
    order = np.random.default_rng(secrets.randbits(64)).permutation(len(train.y))  # not secret, only fair
    aside, rest = np.sort(order[:kept]), np.sort(order[kept:])
    return ClientData(client_id, train.x[rest], train.y[rest], train.x[aside], train.y[aside])


def run_worker(clients: Sequence[Any], server_address: str, model: str | None, *,
               dropout_rate: float = 0.0, dropout_stage: str = "task", straggler_rate: float = 0.0,
               slowdown: dict[str, float] | None = None, keys: dict[str, Any] | None = None,
               broker_key: bytes | None = None, min_noise_multiplier: float = 0.0,
               floor: Any = None, randomness: dict[str, Any] | None = None, ledger_dir: str | None = None,
               share_connection: bool = False) -> int:
    """Serve ``clients`` against the broker until it says BYE; returns an exit code. ``keys`` and
    ``broker_key`` turn on CurveZMQ; ``floor``, ``randomness`` and ``ledger_dir`` are the sessions' own
    limits, local randomness and round ledger; ``share_connection`` puts the sessions on one connection
    (see :class:`~federated.worker.loop.WorkerLoop`)."""
    from federated.worker.loop import WorkerLoop
    from federated.worker.runner import ModelRunner

    runner = ModelRunner(trusted_spec=model, min_noise_multiplier=min_noise_multiplier)
    loop = WorkerLoop(clients, server_address, runner.fit, dropout_rate=dropout_rate, dropout_stage=dropout_stage,
                      straggler_rate=straggler_rate, slowdown=slowdown, keys=keys, broker_key=broker_key, floor=floor,
                      min_noise=min_noise_multiplier, randomness=randomness, ledger_dir=ledger_dir,
                      evaluate=runner.evaluate, share_connection=share_connection)
    interrupted = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        loop.stop()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    code = loop.run()
    return INTERRUPTED if interrupted else int(code)


@click.command("worker")
@click.option("--client-id", required=True, help="This worker's id (letters, digits, _.:@-).")
@click.option("--server-address", default="127.0.0.1:8080", show_default=True, help="Broker HOST:PORT.")
@click.option("--data-path", type=click.Path(file_okay=False),
              help="Directory with train.npz (x, y), and test.npz to score global models on.")
@click.option("--holdout", type=click.FloatRange(0.0, 0.5, max_open=False), default=0.0, show_default=True,
              help="Without test.npz: keep this share of train.npz aside to score global models on "
                   "(federated evaluation); 0: this worker does not score them.")
@click.option("--dataset", help="Built-in data set to take a shard of instead: digits | synthetic | mnist1d[:N] | "
                                 "leaf-synthetic:ALPHA,BETA[,DEVICES].")
@click.option("--shard", type=int, help="Which shard of --dataset (0-based).")
@click.option("--num-shards", type=int, default=1, show_default=True, help="How many shards --dataset is cut into.")
@click.option("--partition", default="iid", show_default=True, help="iid | dirichlet:ALPHA | natural (for --dataset).")
@click.option("--seed", type=int, default=0, show_default=True, help="Partition seed (same on every worker).")
@click.option("--model", help="A MODULE:FACTORY model this worker agrees to build (built-ins need no flag).")
@click.option("--keys", "keys_path", type=click.Path(),
              help="This worker's secret key file (fl keys worker): CurveZMQ on. Needs --broker-key.")
@click.option("--broker-key", type=click.Path(),
              help="The broker's public key file (broker.key), pinned: no other broker is talked to.")
@click.option("--dp-min-noise", type=click.FloatRange(0.0, min_open=False), default=0.0, show_default=True,
              help="Refuse to train unless the broker asks for record-level DP-SGD with at least this noise "
                   "multiplier, or distributed DP giving at least this much to the smallest sum it may "
                   "reveal (0: accept any task).")
@click.option("--secagg-colluders", type=click.IntRange(0), default=0, show_default=True,
              help="Colluding neighbours a secure round must withstand: refuse rounds where "
                   "2 * threshold <= neighbours + this.")
@click.option("--secagg-min-survivors", type=click.IntRange(0), default=0, show_default=True,
              help="Never let a secure sum of fewer inputs than this be unmasked (at least the threshold).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where to keep the ledger of rounds this worker contributed to, so a restarted worker "
                   "still refuses a replayed round (default: beside --keys; in memory without keys).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (default: a line per round).")
def worker_command(client_id: str, server_address: str, data_path: str | None, holdout: float, dataset: str | None,
                   shard: int | None, num_shards: int, partition: str, seed: int, model: str | None,
                   keys_path: str | None, broker_key: str | None, dp_min_noise: float, secagg_colluders: int,
                   secagg_min_survivors: int, state_dir: str | None, verbose: int, quiet: bool) -> None:
    """Run one worker: connect to the broker, train on local data each time it is selected.

    Exit status: 0 when the broker ends training, 2 for bad settings (including a --broker-key that is
    not the broker's: every handshake fails), 3 when the broker refuses this worker's key (not enrolled,
    or revoked), 130 on SIGINT/SIGTERM."""
    setup_logging(0 if quiet else verbose + 1)
    try:
        ClientConfig(client_id=client_id, server_address=server_address, data_path=data_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if (data_path is None) == (dataset is None):
        raise click.UsageError("give exactly one of --data-path DIR or --dataset NAME --shard I")
    if (keys_path is None) != (broker_key is None):
        raise click.UsageError("--keys and --broker-key go together (CurveZMQ needs both)")
    keys: dict[str, Any] | None = None
    pinned: bytes | None = None
    if keys_path is not None and broker_key is not None:
        from pathlib import Path

        from federated.keys import KeyFileError, load_broker_public, load_worker_keys

        try:
            worker_keys, pinned = load_worker_keys(Path(keys_path)), load_broker_public(Path(broker_key))
        except KeyFileError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(CONFIG_ERROR)
        if worker_keys.worker_id != client_id:
            raise click.UsageError(f"--keys belong to worker {worker_keys.worker_id!r}, not --client-id {client_id!r}")
        keys = {client_id: worker_keys}
    from federated.data import DataError
    from federated.worker.loop import ClientData

    try:
        if data_path is not None:
            clients = [own_data(client_id, data_path, holdout)]
        else:
            if shard is None or not 0 <= shard < num_shards:
                raise click.UsageError(f"--shard must be in [0, {num_shards}) with --dataset")
            loaded = load_shards(dataset or "", partition, num_shards, [shard], seed)[0]
            clients = [ClientData(client_id, loaded.x, loaded.y, loaded.x_eval, loaded.y_eval)]
    except DataError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(CONFIG_ERROR)
    from federated.crypto.floor import SafetyFloor

    floor = SafetyFloor(assumed_colluders=secagg_colluders, min_survivors=secagg_min_survivors)
    if state_dir is None and keys_path is not None:
        import os

        state_dir = os.path.dirname(os.path.abspath(keys_path))
    code = run_worker(clients, server_address, model, keys=keys, broker_key=pinned, min_noise_multiplier=dp_min_noise,
                      floor=floor, ledger_dir=state_dir)
    sys.exit(code)

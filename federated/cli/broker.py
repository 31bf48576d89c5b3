"""``flbroker`` / ``fl broker``: coordinate training rounds for workers on the LAN."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from federated.cli.exit_codes import CONFIG_ERROR, INTERRUPTED, OK, TRAINING_FAILED
from federated.cli.options import build_config, emit_json, run_options, setup_logging
from federated.config import FederatedConfig

__all__ = ["broker_command", "prepare_model"]


def prepare_model(config: FederatedConfig) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Initial weights, held-out evaluator and TASK model description for ``config``.

    The held-out split is the test split of ``config.dataset`` (for ``npz:DIR``, ``DIR/test.npz``).
    Imports MLX (to build and evaluate the model); the rest of the broker does not need it.
    Raises ``ValueError`` (DataError, ModelError) if the data or model cannot be loaded.
    """
    from federated.data import load_dataset
    from federated.models import build_model, get_weights
    from federated.worker.runner import ModelRunner, model_config

    _, test = load_dataset(config.dataset, seed=config.seed)
    description = model_config(config.model, test.input_shape, test.num_classes)
    model = build_model(config.model, input_shape=test.input_shape, num_classes=test.num_classes,
                        seed=config.seed)
    runner = ModelRunner(trusted_spec=config.model)
    return get_weights(model), runner.evaluator(description, test.x, test.y), {"model": description}


@click.command("broker")
@click.option("--bind", help="Endpoint to listen on, e.g. tcp://0.0.0.0:8080.")
@click.option("--events", is_flag=True, help="Write one JSON line per round to stdout (for tools).")
@click.option("--keys-dir", type=click.Path(file_okay=False),
              help="Broker keys directory (fl keys broker): CurveZMQ on, only enrolled workers admitted.")
@run_options
def broker_command(bind: str | None, events: bool, keys_dir: str | None, as_json: bool, verbose: int,
                   **params: Any) -> None:
    """Run the broker: wait for workers, run the configured rounds, record them in the store."""
    setup_logging(verbose)
    config = build_config(params, {"broker.bind": bind, "broker.keys_dir": keys_dir})
    try:
        weights, evaluate, task_config = prepare_model(config)
    except (ValueError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(CONFIG_ERROR)

    def say(event: dict[str, Any]) -> None:
        if events:
            click.echo(json.dumps(event, separators=(",", ":")))
            sys.stdout.flush()

    from federated.broker.errors import BindError, StoreError
    from federated.broker.service import serve
    from federated.keys import KeyFileError

    try:
        outcome = serve(config, weights, evaluate=evaluate, task_config=task_config,
                        on_round=lambda rec: say({"event": "round", **rec.to_dict()}),
                        on_listening=lambda ep: say({"event": "listening", "endpoint": ep}))
    except (StoreError, BindError, KeyFileError, ValueError) as exc:  # ValueError: sigma calibration impossible
        click.echo(f"Error: {exc}", err=True)
        sys.exit(CONFIG_ERROR)
    summary = {"event": "done", "completed": outcome.completed, "failed": outcome.failed,
               "interrupted": outcome.interrupted, "reason": outcome.reason, "store": config.broker.store,
               "privacy": outcome.privacy}
    say(summary)
    if as_json and not events:
        emit_json(summary)
    elif not events:
        click.echo(f"{outcome.completed} rounds complete ({outcome.reason}); store: {config.broker.store}",
                   err=True)
    sys.exit(INTERRUPTED if outcome.interrupted else TRAINING_FAILED if outcome.failed else OK)

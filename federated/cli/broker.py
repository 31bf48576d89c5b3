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


def prepare_model(config: FederatedConfig, *, central_data: bool = True
                  ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Initial weights, held-out evaluator (or None) and TASK model description for ``config``.

    The model is described by ``config.input_shape`` and ``config.num_classes`` when they are set, else by
    ``config.dataset``. ``central_data``: evaluate each new model on the test split of ``config.dataset``
    (for ``npz:DIR``, ``DIR/test.npz``), which must then fit the description; False: the broker holds no
    data at all, and only the workers evaluate (federated evaluation).
    Imports MLX (to build and evaluate the model); the rest of the broker does not need it.
    Raises ``ValueError`` (DataError, ModelError) if the data or model cannot be loaded or do not fit.
    """
    from federated.models import build_model, get_weights
    from federated.worker.runner import ModelRunner, check_data_fits, model_config

    if config.input_shape is not None and config.num_classes is not None:
        shape, classes = tuple(config.input_shape), config.num_classes
    elif not central_data:
        raise ValueError("a broker without data needs the model's --input-shape and --num-classes")
    test = None
    if central_data:
        from federated.data import load_dataset

        _, test = load_dataset(config.dataset, seed=config.seed)
        if config.input_shape is None:
            shape, classes = test.input_shape, test.num_classes
    description = model_config(config.model, shape, classes)
    if test is not None:
        try:
            check_data_fits(description, test.x, test.y, f"evaluation data ({config.dataset})")
        except ValueError as exc:
            raise ValueError(str(exc).replace("this worker's", "the broker's")) from None
    model = build_model(config.model, input_shape=shape, num_classes=classes, seed=config.seed)
    runner = ModelRunner(trusted_spec=config.model)
    evaluator = runner.evaluator(description, test.x, test.y) if test is not None else None
    return get_weights(model), evaluator, {"model": description}


def _names_dataset(params: dict[str, Any]) -> bool:
    """Whether the user named a data set for the broker (``--dataset`` or ``dataset:`` in ``--config``)."""
    if params.get("dataset") is not None:
        return True
    path = params.get("config_file")
    if path is None:
        return False
    from pathlib import Path

    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # build_config already read it and would have said what is wrong
    return isinstance(raw, dict) and "dataset" in raw


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
        # With the model described by flags, the broker holds data only if the user names a data set.
        described = config.input_shape is not None
        weights, evaluate, task_config = prepare_model(config, central_data=not described or _names_dataset(params))
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
                        on_listening=lambda ep: say({"event": "listening", "endpoint": ep}),
                        on_evaluation=lambda rec: say({"event": "evaluation", **rec.to_dict()}))
    except (StoreError, BindError, KeyFileError, ValueError) as exc:  # ValueError: sigma calibration impossible
        if isinstance(exc, BindError):  # a tool that chose the port may choose another (fl simulate does)
            say({"event": "bind_failed", "endpoint": config.broker.bind, "error": str(exc)})
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

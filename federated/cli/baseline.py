"""``fl baseline``: train the same model centrally on the union of the same training data.

The comparison is kept honest: same data set, same test split, same initial model (same seed), same
optimizer settings, and at least as many passes over the data as the federated run makes
(``ceil(num_rounds * local_epochs * clients_per_round / num_clients)`` epochs; under Poisson sampling the
expected cohort ``client_sampling_rate * num_clients`` stands for ``clients_per_round``), so the gap between
federated and central training is never flattered by an under-trained baseline.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import click

from federated.cli.exit_codes import CONFIG_ERROR
from federated.cli.options import build_config, emit_json, run_options, setup_logging
from federated.config import FederatedConfig

__all__ = ["baseline_command", "run_baseline"]


def baseline_epochs(config: FederatedConfig) -> int:
    """Epochs over the union that match the federated run's passes over the data (rounded up)."""
    passes = config.num_rounds * config.training.local_epochs * config.expected_cohort / config.num_clients
    return max(1, math.ceil(passes))


def run_baseline(config: FederatedConfig, epochs: int | None = None) -> dict[str, Any]:
    """Train centrally; return ``{"final_accuracy", "final_loss", "wall_s", "epochs", ...}``."""
    from federated.data import load_dataset
    from federated.models import build_model, get_weights
    from federated.worker.trainer import LocalTrainer

    started = time.perf_counter()
    train, test = load_dataset(config.dataset, seed=config.seed)
    model = build_model(config.model, input_shape=train.input_shape, num_classes=train.num_classes,
                        seed=config.seed)
    trainer = LocalTrainer(model)
    weights = get_weights(model)
    epochs = epochs or baseline_epochs(config)
    # Central training: the run's settings over the union, without FedProx's pull towards a global model.
    cfg = dataclasses.replace(config.training.to_train_config(), epochs=epochs, proximal_mu=0.0)
    result = trainer.fit(weights, train.x, train.y, cfg, seed=config.seed)
    final = {k: weights[k] + result.update[k] for k in weights}
    loss, accuracy = trainer.evaluate(final, test.x, test.y)
    return {"final_accuracy": accuracy, "final_loss": loss, "wall_s": time.perf_counter() - started,
            "epochs": epochs, "train_samples": len(train), "test_samples": len(test),
            "dataset": config.dataset, "model": config.model}


@click.command("baseline")
@click.option("--epochs", type=click.IntRange(1, 100_000), help="Override the number of epochs.")
@run_options
def baseline_command(epochs: int | None, as_json: bool, verbose: int, **params: Any) -> None:
    """Centralized training on the union of the data, for comparison with ``fl simulate``."""
    setup_logging(verbose)
    config = build_config(params)
    try:
        result = run_baseline(config, epochs)
    except ValueError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(CONFIG_ERROR)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"baseline: {result['epochs']} epochs on {result['train_samples']} samples -> accuracy "
                   f"{result['final_accuracy']:.4f}, loss {result['final_loss']:.4f} ({result['wall_s']:.2f} s)")

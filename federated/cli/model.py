"""``fl model export``: the global model of a run as one self-describing safetensors file.

    fl model export [--store PATH] [--round N] --output FILE.safetensors [--json]

The file holds the model's tensors (named as MLX's ``tree_flatten`` names them, so ``model.load_weights``
takes them as they are) and its model card in the safetensors metadata (:mod:`federated.broker.card`):
how to build the network, the round, its held-out accuracy and loss, and the privacy spent. Loading it::

    import json, mlx.core as mx
    from federated.models import build_model
    weights, card = mx.load("model.safetensors", return_metadata=True)
    spec = json.loads(card["model"])
    model = build_model(spec["spec"], input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"])
    model.load_weights(list(weights.items()))

The store is opened read-only. A missing store or round, or a round that failed (it has no model of its
own), is a usage error: exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click
import safetensors.numpy

from federated.broker.card import model_card
from federated.broker.errors import RoundNotFoundError
from federated.cli.options import emit_json
from federated.cli.rounds import DEFAULT_STORE, _open

__all__ = ["model"]


@click.group("model")
def model() -> None:
    """Get the trained model out of a broker's store."""


@model.command("export")
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_STORE,
              show_default=True, help="The broker's store database.")
@click.option("--round", "round_id", type=click.IntRange(min=1),
              help="Which round's global model (default: the last complete round).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The safetensors file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the model card as one JSON line.")
def export_command(store_path: Path, round_id: int | None, output: Path, as_json: bool) -> None:
    """Write a round's global model and its model card (safetensors metadata) to one file."""
    with _open(store_path) as store:
        if round_id is None:
            round_id = store.last_complete_round()
            if round_id is None:
                raise click.UsageError(f"{store_path} has no complete round yet")
        try:
            record = store.get_round(round_id)
        except RoundNotFoundError:
            raise click.BadParameter(f"round {round_id} is not in {store_path}", param_hint="'--round'") from None
        if record.status != "complete":
            raise click.BadParameter(f"round {round_id} failed: the model was unchanged, so it has no checkpoint "
                                     "of its own; export the round before it", param_hint="'--round'")
        weights = store.load_checkpoint(round_id)
        described, config = store.get_meta("model"), store.get_meta("config")
    card = model_card(round_id, model=described if isinstance(described, dict) else None,
                      config=config if isinstance(config, dict) else None,
                      accuracy=record.accuracy, loss=record.loss, epsilon=record.epsilon,
                      fed_accuracy=record.fed_accuracy, fed_loss=record.fed_loss)
    output.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file({k: v for k, v in weights.items()}, str(output), metadata=card)
    if as_json:
        emit_json({"output": str(output), "card": card})
    else:
        click.echo(f"Wrote round {round_id}'s model to {output} "
                   f"(accuracy {card['accuracy'] or '-'}, federated accuracy {card['fed_accuracy'] or '-'}, "
                   f"epsilon {card['epsilon'] or '-'})")

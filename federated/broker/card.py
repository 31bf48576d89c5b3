"""A model card: what a checkpoint or an exported model is, in its own safetensors metadata.

safetensors metadata is a flat string -> string map, so every value is a string; structured values
(the model description) are JSON. Keys::

    format         "federated-model-card-v1"
    round          the round whose global model this is
    model          JSON {"spec", "input_shape", "num_classes"}: how to build the network (build_model)
    accuracy, loss the broker's held-out evaluation of that model ("" when there was none)
    fed_accuracy, fed_loss   the workers' federated evaluation of it ("" when there was none; a checkpoint
                   is written before the workers score its model, so only an exported model has them)
    epsilon, delta privacy spent up to that round ("" without differential privacy), privacy_mode
    dataset, num_clients, num_rounds   the run it came from

Everything here is also in the store; the card makes a model file self-describing once it leaves it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["CARD_FORMAT", "model_card"]

CARD_FORMAT = "federated-model-card-v1"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def model_card(round_id: int, *, model: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
               accuracy: float | None = None, loss: float | None = None,
               epsilon: float | None = None, fed_accuracy: float | None = None,
               fed_loss: float | None = None) -> dict[str, str]:
    """The card of round ``round_id``'s model. ``model`` is the TASK's model description, ``config`` the
    run's resolved configuration as the store keeps it (either may be missing in an old store)."""
    config = config or {}
    privacy = config.get("privacy") or {}
    return {
        "format": CARD_FORMAT,
        "round": str(round_id),
        "model": json.dumps(dict(model), sort_keys=True) if model else "",
        "accuracy": _text(accuracy),
        "loss": _text(loss),
        "fed_accuracy": _text(fed_accuracy),
        "fed_loss": _text(fed_loss),
        "epsilon": _text(epsilon),
        "delta": _text(privacy.get("delta")) if epsilon is not None else "",
        "privacy_mode": _text(privacy.get("mode") or "none"),
        "dataset": _text(config.get("dataset")),
        "num_clients": _text(config.get("num_clients")),
        "num_rounds": _text(config.get("num_rounds")),
    }

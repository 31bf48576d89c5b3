"""``fl model export`` writes a round's global model with its model card, loadable in MLX as the README
shows; every checkpoint carries the same card (issue 16, item 11)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from federated.broker.card import CARD_FORMAT
from federated.broker.store import RoundRecord, RoundStore
from federated.cli.model import model
from federated.models import build_model
from federated.models.weights import get_weights

DESCRIPTION = {"spec": "mlp", "input_shape": [64], "num_classes": 10}


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "store.db"
    net = build_model("mlp", input_shape=(64,), num_classes=10, seed=1)
    weights = {k: np.array(v) for k, v in get_weights(net).items()}
    with RoundStore(path) as store:
        store.set_meta("config", {"dataset": "digits", "num_clients": 3, "num_rounds": 3,
                                  "privacy": {"mode": "central", "delta": 1e-5}})
        store.set_meta("model", DESCRIPTION)
        store.save_initial(weights)
        for n, status in ((1, "complete"), (2, "failed"), (3, "complete")):
            done = status == "complete"
            store.record_round(RoundRecord(round=n, status=status, started_at=1.0, duration_s=1.0,
                                           accuracy=0.5 + n / 10 if done else None, loss=1.0 / n if done else None,
                                           epsilon=0.25 * n),
                               {k: v + n for k, v in weights.items()} if done else None)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(model, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_export_writes_the_last_complete_model_with_its_card(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    code, stdout, _ = run("export", "--store", str(store_path), "--output", str(out), "--json")
    assert code == 0, stdout
    card = json.loads(stdout.strip().splitlines()[-1])["card"]
    assert card["format"] == CARD_FORMAT and card["round"] == "3"
    assert float(card["accuracy"]) == pytest.approx(0.8) and float(card["epsilon"]) == 0.75
    assert card["delta"] == "1e-05" and card["privacy_mode"] == "central" and card["dataset"] == "digits"
    # The README's recipe, as written there: the card says how to build the network.
    weights, meta = mx.load(str(out), return_metadata=True)
    spec = json.loads(meta["model"])
    net = build_model(spec["spec"], input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"])
    net.load_weights(list(weights.items()))
    with RoundStore(store_path, readonly=True) as store:
        stored = store.load_checkpoint(3)
    for name, value in get_weights(net).items():
        np.testing.assert_array_equal(np.array(value), stored[name])


def test_checkpoints_carry_the_model_card(store_path: Path) -> None:
    with RoundStore(store_path, readonly=True) as store:
        path = store.checkpoint_path(1)
    _, meta = mx.load(str(path), return_metadata=True)
    assert meta["round"] == "1" and json.loads(meta["model"]) == DESCRIPTION and meta["epsilon"] == "0.25"


def test_a_failed_or_missing_round_is_a_usage_error(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    code, _, stderr = run("export", "--store", str(store_path), "--round", "2", "--output", str(out))
    assert code == 2 and "round 2 failed" in stderr and not out.exists()
    code, _, stderr = run("export", "--store", str(store_path), "--round", "9", "--output", str(out))
    assert code == 2 and "round 9 is not in" in stderr

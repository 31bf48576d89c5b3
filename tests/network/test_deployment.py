"""A real deployment as the README describes it (issue 16): a keyed ``flbroker --secure`` that holds no data
(the model is described by flags) and three ``flworker``s, each on its own npz files of a task that is not
digits (24 features, 6 classes). Every round is scored on the workers' own held-out data (federated
evaluation, inside the masked sums), and a worker whose data does not fit the model says why at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import BIN, Proc, broker_config, free_port, run_fl

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]

FEATURES, CLASSES = 24, 6


def _write_task(directory: Path, n_train: int, n_test: int, seed: int, features: int = FEATURES) -> None:
    """Six well-separated Gaussian classes in ``features`` dimensions (the same class means for everyone)."""
    means = np.random.default_rng(1234).normal(0.0, 3.0, size=(CLASSES, features))
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, CLASSES, size=n)
        x = (means[y] + rng.normal(size=(n, features))).astype(np.float32)
        np.savez(directory / f"{name}.npz", x=x, y=y.astype(np.int64))


def _keys(*args: str) -> None:
    proc = run_fl("keys", *args, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_keyed_secure_broker_without_data_gets_federated_accuracy_every_round(tmp_path: Path,
                                                                                procs: list[Proc]) -> None:
    port = free_port()
    keys_dir = tmp_path / "broker-keys"
    _keys("broker", "--keys-dir", str(keys_dir))
    for i, n in enumerate((150, 220, 300)):  # unequal private data sets, each with its own test split
        _write_task(tmp_path / f"w{i}" / "data", n, 60, seed=i)
        _keys("worker", "--client-id", f"w{i}", "--out", str(tmp_path / f"w{i}"))
        _keys("enrol", str(tmp_path / f"w{i}" / f"w{i}.pub"), "--keys-dir", str(keys_dir))
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--keys-dir", str(keys_dir),
                   "--secure", "--model", "mlp", "--input-shape", str(FEATURES), "--num-classes", str(CLASSES),
                   "--num-clients", "3", "--num-rounds", "3", "--local-epochs", "5",
                   "--config", str(broker_config(tmp_path, start_timeout_s=600.0)),
                   "--store", str(tmp_path / "store.db"), "--events"])
    procs.append(broker)
    for i in range(3):
        procs.append(Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                           "--data-path", str(tmp_path / f"w{i}" / "data"),
                           "--keys", str(tmp_path / f"w{i}" / f"w{i}.secret"),
                           "--broker-key", str(keys_dir / "broker.key")]))
    events = list(broker.events(timeout=240))
    assert broker.wait(30) == 0, broker.stderr_lines[-10:]
    for worker in procs[1:]:
        assert worker.wait(30) == 0, worker.stderr_lines[-5:]
    rounds = [e for e in events if e["event"] == "round"]
    scored = {e["round"]: e for e in events if e["event"] == "evaluation"}
    assert [r["status"] for r in rounds] == ["complete"] * 3
    assert all(r["accuracy"] is None for r in rounds)  # the broker has no data to score on
    assert sorted(scored) == [1, 2, 3]  # every round's model scored by the workers, the last one included
    assert all("fed_accuracy_min" not in e["metrics"] for e in scored.values())  # only sums are seen
    assert scored[3]["metrics"]["fed_weight"] == 150 + 220 + 300  # every worker's weight, none alone
    assert scored[3]["fed_accuracy"] > 0.9  # six well-separated classes
    with RoundStore(tmp_path / "store.db", readonly=True) as store:
        assert [r.fed_accuracy for r in store.list_rounds()] == [scored[n]["fed_accuracy"] for n in (1, 2, 3)]
    # The exported model says how to build it and how well the workers found it.
    exported = run_fl("model", "export", "--store", str(tmp_path / "store.db"), "-o", str(tmp_path / "m.safetensors"),
                      "--json", timeout=60)
    assert exported.returncode == 0, exported.stderr[-2000:]
    card = json.loads(exported.stdout.strip().splitlines()[-1])["card"]
    assert json.loads(card["model"]) == {"spec": "mlp", "input_shape": [FEATURES], "num_classes": CLASSES}
    assert float(card["fed_accuracy"]) == pytest.approx(scored[3]["fed_accuracy"]) and card["accuracy"] == ""
    # Each worker says, per round, what it did (issue 16, item 6).
    assert any("held-out examples" in line for line in procs[1].stderr_lines)


def test_a_worker_whose_data_does_not_fit_the_model_says_why_and_the_round_goes_on(tmp_path: Path,
                                                                                   procs: list[Proc]) -> None:
    port = free_port()
    for i in range(3):
        _write_task(tmp_path / f"w{i}", 120, 30, seed=i, features=FEATURES if i < 2 else 20)
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--model", "mlp",
                   "--input-shape", str(FEATURES), "--num-classes", str(CLASSES), "--num-clients", "3",
                   "--num-rounds", "1", "--min-clients", "2", "--local-epochs", "2",
                   "--config", str(broker_config(tmp_path, start_timeout_s=600.0, round_timeout_s=120.0)),
                   "--store", str(tmp_path / "store.db"), "--events"])
    procs.append(broker)
    for i in range(3):
        procs.append(Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                           "--data-path", str(tmp_path / f"w{i}")]))
    events = list(broker.events(timeout=120))
    assert broker.wait(30) == 0
    (round1,) = [e for e in events if e["event"] == "round"]
    assert round1["status"] == "complete" and round1["dropped"] == ["w2"]
    assert round1["duration_s"] < 60.0  # dropped on its error, not at the 120 s deadline
    assert any("w2 reported an error: bad_task: this worker's training data has 20 features per example; "
               "the task's model (mlp, input_shape [24]) takes 24" in line for line in broker.stderr_lines)

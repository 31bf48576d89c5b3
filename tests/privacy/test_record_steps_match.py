"""Record mode charges epsilon for what really ran: the DP-SGD steps a worker performs are the steps the
broker's accountant records.

README: record-mode epsilon "for what really ran". The broker charges each round
``local_epochs * round(1/q)`` Poisson-sampled Gaussian steps (:func:`federated.privacy.ledger.dpsgd_steps`);
each worker runs DP-SGD from the TASK the same broker sent. Here one broker round is driven end to end
without sockets: the coordinator's TASK goes to the real :class:`ModelRunner` (MLX DP-SGD), whose compiled
step is counted as it runs; the worker's UPDATE goes back; and the count must equal both the accountant's
recorded steps and the steps behind the round's reported epsilon. Sampling rates with 1/q not an integer
(0.3, 0.15) catch a floor/ceil mismatch between the two sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from federated.broker.coordinator import STAGE_TRAIN, Coordinator
from federated.broker.store import RoundRecord
from federated.config import BrokerConfig, FederatedConfig, PrivacyConfig, TrainingConfig
from federated.models import build_model, get_weights
from federated.privacy import compute_epsilon
from federated.privacy.dpsgd import DpSgdStep
from federated.protocol import Hello, Task, Update, decode_message
from federated.worker.runner import ModelRunner, model_config

T0 = 1000.0
WORKERS = ("w1", "w2", "w3")
SIGMA, DELTA = 1.1, 1e-5


@pytest.fixture
def step_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every DP-SGD update the trainer really performs (the compiled step, called once a step)."""
    count = [0]
    real = DpSgdStep.step

    def counted(self: DpSgdStep, *args: Any) -> Any:
        count[0] += 1
        return real(self, *args)

    monkeypatch.setattr(DpSgdStep, "step", counted)
    return count


@pytest.mark.parametrize(("epochs", "q"), [(1, 0.25), (2, 0.3), (3, 0.15)])
def test_worker_steps_equal_the_steps_the_broker_charges(epochs: int, q: float, step_counter: list[int]) -> None:
    description = model_config("mlp", (4,), 3)
    weights = get_weights(build_model("mlp", input_shape=(4,), num_classes=3, seed=0))
    broker = BrokerConfig(round_timeout_s=10.0, start_timeout_s=5.0, heartbeat_interval_s=1.0,
                          heartbeat_timeout_s=3.0, max_failed_rounds=2)
    config = FederatedConfig(num_clients=3, clients_per_round=3, min_clients=2, num_rounds=2, broker=broker,
                             training=TrainingConfig(local_epochs=epochs, batch_size=8),
                             privacy=PrivacyConfig(mode="record", noise_multiplier=SIGMA, clip=1.0,
                                                   sampling_rate=q, delta=DELTA))
    records: list[RoundRecord] = []
    coord = Coordinator(config, weights, on_round=records.append, task_config={"model": description},
                        clock=lambda: T0)
    for wid in WORKERS:
        coord.handle(f"r-{wid}".encode(), [bytes(f) for f in Hello(wid, 40).to_frames()], T0)
    sent = [(o.route, decode_message([bytes(f) for f in o.frames])) for o in coord.tick(T0)]
    tasks = {route: msg for route, msg in sent if isinstance(msg, Task)}
    assert len(tasks) == 3

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    runner = ModelRunner()
    performed: list[int] = []
    for route, task in sorted(tasks.items()):
        wid = route.decode()[2:]
        before = step_counter[0]
        update, metrics = runner.fit(dict(task.weights), x, y, task.config, seed=1)
        performed.append(step_counter[0] - before)
        assert metrics["dp_steps"] == performed[-1]  # what the worker reports is what it ran
        assert metrics["dp_sampling_rate"] == q
        coord.handle(route, [bytes(f) for f in Update(wid, task.round_id, STAGE_TRAIN, 40, metrics,
                                                      update).to_frames()], T0)

    steps = performed[0]
    assert performed == [steps] * 3 and steps > 0
    ledger = coord.privacy
    assert ledger is not None
    # The accountant recorded exactly the steps each worker performed, at the rate and noise it used.
    assert ledger.accountant.events == [(q, SIGMA, steps)]
    assert ledger.accountant.total_steps == steps
    assert len(records) == 1 and records[0].status == "complete"
    assert records[0].epsilon == pytest.approx(compute_epsilon(q, SIGMA, steps, DELTA), rel=1e-12)

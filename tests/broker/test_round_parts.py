"""The coordinator's parts on their own: the round plan (a pure function of the coordinator's state), the
plain collector's rows, and the record builder. The whole lifecycle is tested through the coordinator
(test_coordinator.py, test_secure_coordinator.py and the others)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support import harness_config, harness_weights

from federated.aggregation.vectors import flatten
from federated.broker.collector import Collected
from federated.broker.plain_round import PlainRound
from federated.broker.planning import STAGE_TRAIN, candidates, compression_seed, plan_round
from federated.broker.records import build_record
from federated.broker.store import RoundRecord
from federated.config import PrivacyConfig, SecureConfig
from federated.privacy.ledger import PrivacyLedger
from federated.protocol import ErrorCode, Update


def test_a_plain_plan_says_what_every_task_carries_and_changes_nothing() -> None:
    config = harness_config(compression="q8", privacy=PrivacyConfig(mode="record", noise_multiplier=1.0, clip=1.0))
    ledger = PrivacyLedger(config, 10)
    before = ledger.to_dict()
    plan = plan_round(config, 7, ["w2", "w1", "w3"], weights=harness_weights(), run_id="run",
                      model_config={"model": "mlp"}, privacy=ledger, secure_codec=None)
    assert ledger.to_dict() == before  # planning reads the ledger; the coordinator charges it
    assert plan.cohort == ("w2", "w1", "w3") and not plan.is_secure and plan.shared_indices(10) is None
    assert plan.compression_seed == compression_seed(config.seed, 7)
    task = plan.task(1, harness_weights())
    assert (task.round_id, task.stage, task.cohort_index, task.cohort_size) == (7, STAGE_TRAIN, 1, 3)
    assert task.config["model"] == "mlp" and task.config["run_id"] == "run" and "secagg" not in task.config
    assert task.config["train"]["dp_noise_multiplier"] == 1.0  # record-level DP's trainer settings
    assert task.config["compression"] == "q8" and task.config["compression_seed"] == plan.compression_seed


def test_a_secure_plan_gives_each_worker_its_buckets_parameters() -> None:
    config = harness_config(num_clients=6, clients_per_round=6, secure=SecureConfig(enabled=True),
                            aggregation=replace(harness_config().aggregation, bucket_size=3))
    plan = plan_round(config, 1, [f"w{i}" for i in range(6)], weights=harness_weights(), run_id="run",
                      model_config={}, privacy=None, secure_codec=config.secure_plan())
    assert plan.is_secure and len(plan.buckets) == 2 and sorted(plan.cohort) == [f"w{i}" for i in range(6)]
    assert plan.cohort == tuple(w for bucket in plan.buckets for w in bucket)
    for index, wid in enumerate(plan.cohort):
        bucket = next(i for i, b in enumerate(plan.buckets) if wid in b)
        assert plan.task(index, harness_weights()).config["secagg"] == plan.secure[bucket].to_dict()


def test_candidates_wait_for_the_cohort_or_the_timeout() -> None:
    config = harness_config(num_clients=4, clients_per_round=4, min_clients=2)
    assert candidates(config, ["a", "b", "c"], {}, waited=False) is None
    assert candidates(config, ["a", "b", "c"], {}, waited=True) == ["a", "b", "c"]
    assert candidates(config, ["a"], {}, waited=True) is None
    secure = harness_config(num_clients=4, clients_per_round=3, min_clients=2, secure=SecureConfig(enabled=True))
    assert candidates(secure, ["a", "b", "c"], {"a": b"k", "b": b"k"}, waited=True) is None  # two with keys
    assert candidates(secure, ["a", "b", "c", "d"], dict.fromkeys("abc", b"k"), waited=True) == ["a", "b", "c"]


def test_the_plain_collector_keeps_each_update_as_a_row_in_sorted_order() -> None:
    config = harness_config(min_clients=2)
    weights = harness_weights()
    plan = plan_round(config, 1, ["w3", "w1", "w2"], weights=weights, run_id="run", model_config={},
                      privacy=None, secure_codec=None)
    rows = np.full((3, 10), np.nan, np.float32)
    collector = PlainRound(plan, config, rows, 0.0, reference=weights, codec=None)
    updates = {w: {k: np.full(v.shape, float(i), np.float32) for k, v in weights.items()}
               for i, w in enumerate(["w1", "w2", "w3"], start=1)}
    assert collector.receive("w3", Update("w3", 1, STAGE_TRAIN, 30, {"loss": 0.3}, updates["w3"])) is None
    assert collector.receive("w1", Update("w1", 1, STAGE_TRAIN, 10, {}, updates["w1"])) is None
    refused = collector.receive("w1", Update("w1", 1, STAGE_TRAIN, 10, {}, updates["w1"]))
    assert refused is not None and refused.code == ErrorCode.WRONG_STAGE
    assert collector.pending == {"w2"} and not collector.finished
    assert collector.progress(plan.timeout_s) == [] and collector.finished
    got = collector.result()
    assert got.survivors == ["w1", "w3"] and got.dropped == {"w2": "deadline"} and got.failure is None
    assert got.rows is not None and got.rows.shape == (2, 10) and np.shares_memory(got.rows, rows)
    np.testing.assert_array_equal(got.rows, np.stack([flatten(updates[w], np.float32) for w in ["w1", "w3"]]))
    assert not got.updates["w3"].update and got.updates["w3"].num_samples == 30  # tensors live in the row


def test_the_record_is_a_function_of_the_round() -> None:
    update = Update("w1", 4, STAGE_TRAIN, 20, {"loss": 0.5, "accuracy": 0.75, "train_s": 2.0}, {})
    collected = Collected(["w1"], {"w2": "timeout", "w3": "timeout"}, failure="too few", updates={"w1": update})
    def build() -> RoundRecord:
        return build_record(round_id=4, status="failed", started_at=100.0, duration_s=5.0,
                            cohort=("w1", "w2", "w3"), collected=collected, bytes_up=10, bytes_down=20,
                            epsilon=None, error="too few")

    record = build()
    assert record == build()
    assert (record.round, record.status, record.survivors, record.dropped) == (4, "failed", ("w1",), ("w2", "w3"))
    assert record.num_samples == 20 and record.train_loss == 0.5 and record.train_accuracy == 0.75
    assert record.overhead_s == pytest.approx(3.0) and record.metrics["dropped_timeout"] == 2.0

"""The coordinator with robust rules: plain rounds, detection in the round record, refusals, and the
bucketed secure mode driven by real secure-aggregation workers."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from support import SecureFakeWorker, run_coordinator_round

from federated.broker.coordinator import Coordinator
from federated.config import (
    AggregationConfig,
    BrokerConfig,
    ConfigError,
    FederatedConfig,
    SecureConfig,
    load_config,
)
from federated.crypto.params import SecAggParams
from federated.protocol import Hello, Task, Update
from federated.worker.secure import encode_input

WEIGHTS = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 2), np.float32)}


def _plain(rule: str, n: int, **agg: object) -> Coordinator:
    config = FederatedConfig(num_clients=n, clients_per_round=n, num_rounds=1,
                             aggregation=AggregationConfig(rule=rule, **agg),  # type: ignore[arg-type]
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    return Coordinator(config, WEIGHTS)


def _play(c: Coordinator, updates: dict[str, float]) -> None:
    for wid in updates:
        c.handle(wid.encode(), Hello(wid, 10).to_frames(), 0.0)
    c.tick(0.0)
    assert c.round is not None
    rid = c.round.round_id
    for wid, value in updates.items():
        tensors = {k: np.full(v.shape, value, np.float32) for k, v in WEIGHTS.items()}
        c.handle(wid.encode(), Update(wid, rid, "train", 10, {"loss": 1.0}, tensors).to_frames(), 0.1)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "geometric_median", "krum", "centered_clipping"])
def test_robust_rule_ignores_an_outlier_and_detection_names_it(rule: str) -> None:
    # Centered clipping's bias is bounded by tau times the attackers' share: tau must suit the spread.
    c = _plain(rule, 7, clip_tau=0.05)
    _play(c, {"h0": 0.10, "h1": 0.11, "h2": 0.09, "h3": 0.10, "h4": 0.12, "h5": 0.08, "evil": -500.0})
    (record,) = c.history
    assert record.status == "complete"
    assert np.all(np.abs(c.weights["w"] - 0.10) < 0.05), c.weights
    assert record.suspects == ("evil",)


def test_mean_is_pulled_by_the_outlier_but_detection_still_reports_it() -> None:
    c = _plain("mean", 5)
    _play(c, {"h0": 0.1, "h1": 0.1, "h2": 0.1, "h3": 0.1, "evil": -50.0})
    assert c.weights["w"][0, 0] < -5
    assert c.history[0].suspects == ("evil",)


def test_a_suspect_is_logged_once_with_its_score_and_recorded_every_round(caplog: pytest.LogCaptureFixture) -> None:
    config = FederatedConfig(num_clients=5, clients_per_round=5, num_rounds=3,
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    c = Coordinator(config, WEIGHTS)
    updates = {"h0": 0.1, "h1": 0.11, "h2": 0.09, "h3": 0.1, "evil": -50.0}
    for wid in updates:
        c.handle(wid.encode(), Hello(wid, 10).to_frames(), 0.0)
    with caplog.at_level(logging.INFO, logger="federated.broker"):
        for rnd in range(3):
            c.tick(rnd + 0.0)
            assert c.round is not None
            for wid, value in updates.items():
                tensors = {k: np.full(v.shape, value, np.float32) for k, v in WEIGHTS.items()}
                frames = Update(wid, c.round.round_id, "train", 10, {"loss": 1.0}, tensors).to_frames()
                c.handle(wid.encode(), frames, rnd + 0.1)
    assert [r.suspects for r in c.history] == [("evil",)] * 3
    said = [r for r in caplog.records if "suspected" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [r.getMessage() for r in said]
    assert re.search(r"worker evil suspected Byzantine \(score \d+\.\d > 3\.5\)", said[0].getMessage())


def test_a_cohort_too_small_for_the_rule_fails_the_round_cleanly() -> None:
    c = _plain("bulyan", 4, byzantine_fraction=0.25)  # f = 1 needs n >= 7
    _play(c, {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1})
    (record,) = c.history
    assert record.status == "failed" and "bulyan" in (record.error or "").lower()
    assert np.all(c.weights["w"] == 0)


def test_secure_with_a_robust_rule_needs_buckets() -> None:
    with pytest.raises(ConfigError, match="bucketed mode") as info:
        load_config(None, {"secure.enabled": True, "aggregation.rule": "median"})
    assert info.value.field == "aggregation.rule"
    assert load_config(None, {"secure.enabled": True, "aggregation.rule": "median",
                              "aggregation.bucket_size": 3}).aggregation.bucket_size == 3
    with pytest.raises(ConfigError, match="at least 3"):
        load_config(None, {"secure.enabled": True, "aggregation.rule": "median", "aggregation.bucket_size": 2})


def test_bucketed_secure_round_sees_only_bucket_sums_and_resists_an_attacker() -> None:
    workers = [SecureFakeWorker(f"w{i}", 10, 0.1) for i in range(8)] + [SecureFakeWorker("evil", 10, -90.0)]
    config = FederatedConfig(num_clients=9, clients_per_round=9, num_rounds=1, min_clients=2,
                             secure=SecureConfig(enabled=True),
                             aggregation=AggregationConfig(rule="median", bucket_size=3),
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    coordinator, received = run_coordinator_round(workers, config=config)
    (record,) = coordinator.history
    assert record.status == "complete", record.error
    # Three buckets of three; the attacker poisons one bucket mean, the median of three ignores it.
    assert np.all(np.abs(coordinator.weights["w"] - 0.1) < 0.02), coordinator.weights
    assert len(coordinator.history[0].survivors) == 9
    # The broker received only masked inputs, none equal to a worker's encoded input.
    masked = [m.masked for m in received if type(m).__name__ == "MaskedInput"]
    assert len(masked) == 9 and not any(isinstance(m, Update) for m in received)
    for m in masked:
        assert all(np.count_nonzero(m == w.encoded) <= 1 for w in workers)


class UnclippedWorker(SecureFakeWorker):
    """A cheater that encodes its update without the round's clip (a malicious encoder)."""

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, Task):
            reply = super().answer(msg)
            params = SecAggParams.from_dict(msg.config["secagg"])
            self.encoded = encode_input(self.update, {}, self.samples, replace(params, clip=1e4))
            return reply
        return super().answer(msg)


@pytest.mark.parametrize("bucket_size", [None, 3])
def test_a_sum_beyond_the_clip_bound_is_left_out(bucket_size: int | None) -> None:
    workers = [SecureFakeWorker(f"w{i}", 10, 0.1) for i in range(8)] + [UnclippedWorker("evil", 10, -30.0)]
    config = FederatedConfig(num_clients=9, clients_per_round=9, num_rounds=1, min_clients=2,
                             secure=SecureConfig(enabled=True, clip=1.0),
                             aggregation=AggregationConfig(rule="median" if bucket_size else "mean",
                                                           bucket_size=bucket_size),
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    coordinator, _ = run_coordinator_round(workers, config=config)
    (record,) = coordinator.history
    if bucket_size is None:  # one sum, provably not honest: the round fails and the model stays
        assert record.status == "failed" and "beyond the clip bound" in (record.error or "")
        assert all(np.all(v == 0) for v in coordinator.weights.values())
    else:  # the cheater's bucket is left out; the other two agree on 0.1
        assert record.status == "complete", record.error
        np.testing.assert_allclose(coordinator.weights["w"], 0.1, atol=0.01)
        # Its bucket (the cheater and two others) is suspected and not counted among the survivors.
        assert "evil" in record.suspects and len(record.suspects) == 3
        assert set(record.suspects) <= set(record.dropped) and not set(record.suspects) & set(record.survivors)


def test_honest_sums_at_the_clip_bound_are_kept() -> None:
    # Every worker exactly at the bound (norm 1 after clipping): no honest bucket may be left out.
    workers = [SecureFakeWorker(f"w{i}", 10 + i, 5.0) for i in range(6)]
    config = FederatedConfig(num_clients=6, clients_per_round=6, num_rounds=1, min_clients=2,
                             secure=SecureConfig(enabled=True, clip=1.0),
                             aggregation=AggregationConfig(rule="median", bucket_size=3),
                             broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    coordinator, _ = run_coordinator_round(workers, config=config)
    (record,) = coordinator.history
    assert record.status == "complete", record.error

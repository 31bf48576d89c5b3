"""Differential privacy in the broker's rounds: the ledger charges each round, the budget stops training,
central noise is added to the clipped sum, and a resumed broker continues the same accountant."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import CoordinatorHarness, harness_config, harness_weights, tasked

from federated.aggregation.vectors import flatten
from federated.broker.service import _resume
from federated.broker.store import RoundStore
from federated.config import ConfigError, FederatedConfig, PrivacyConfig, SecureConfig
from federated.privacy import compute_epsilon
from federated.privacy.central import central_mean

ALL = ["w1", "w2", "w3"]


def _config(**privacy: Any) -> FederatedConfig:
    budget = privacy.pop("budget", None)
    rounds = privacy.pop("rounds", 5)
    return harness_config(num_rounds=rounds, privacy_budget=budget, privacy=PrivacyConfig(**privacy))


def _round(h: CoordinatorHarness, values: dict[str, float] | None = None) -> None:
    rnd = h.coord.round
    assert rnd is not None
    for wid in sorted(rnd.cohort):
        fill = (values or {}).get(wid, 0.1)
        h.send(wid, h.update(wid, {k: np.full(v.shape, fill, np.float32) for k, v in harness_weights().items()}))
    h.advance(0.5, alive=ALL)


def test_central_mode_charges_each_round_with_the_gaussian_mechanism_and_no_amplification() -> None:
    h = CoordinatorHarness(_config(mode="central", noise_multiplier=2.0, clip=1.0))
    h.join(*ALL)
    for _ in range(3):
        _round(h)
    eps = [r.epsilon for r in h.records]
    assert len(eps) == 3
    for rounds, value in enumerate(eps, start=1):
        assert value == pytest.approx(compute_epsilon(1.0, 2.0, rounds, 1e-5, "rdp"), rel=1e-12)
    assert eps[0] < eps[1] < eps[2]


def test_central_noise_is_added_to_the_clipped_sum() -> None:
    # Each worker's update has norm sqrt(10) * 100 >> clip 1: the broker must clip it to norm 1.
    h = CoordinatorHarness(_config(mode="central", noise_multiplier=1e-6, clip=1.0))
    h.join(*ALL)
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    _round(h, {"w1": 100.0, "w2": 100.0, "w3": 100.0})
    step = np.concatenate([(h.coord.weights[k] - before[k]).ravel() for k in before])
    assert np.linalg.norm(step) == pytest.approx(1.0, rel=1e-3)  # the mean of three unit-norm updates


def test_central_noise_has_std_sigma_times_clip_over_n() -> None:
    h = CoordinatorHarness(_config(mode="central", noise_multiplier=3.0, clip=0.5))
    h.join(*ALL)
    updates = np.stack([flatten({k: np.zeros(v.shape, np.float32) for k, v in harness_weights().items()})
                        for _ in ALL])
    ledger = h.coord.privacy
    assert ledger is not None
    draws = np.concatenate([central_mean(updates, clip=ledger.current_clip, sigma=ledger.update_sigma,
                                         planned=h.coord.config.clients_per_round) for _ in range(500)])
    assert draws.std() == pytest.approx(3.0 * 0.5 / 3, rel=0.05)


def test_the_budget_stops_training_before_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    budget = compute_epsilon(1.0, 4.0, 2, 1e-5) * 1.01  # room for two rounds, not three
    with RoundStore(tmp_path / "s.db") as store:
        h = CoordinatorHarness(_config(mode="central", noise_multiplier=4.0, budget=budget, rounds=10), store=store)
        h.join(*ALL)
        for _ in range(2):
            _round(h)
        assert h.coord.done and h.coord.round is None
        assert "privacy budget" in h.coord.exit_reason and "round 3" in h.coord.exit_reason
        rounds = store.list_rounds()
        assert [r.round for r in rounds] == [1, 2]
        assert rounds[-1].epsilon is not None and rounds[-1].epsilon <= budget


def test_sigma_is_calibrated_so_the_planned_rounds_fit_the_budget() -> None:
    h = CoordinatorHarness(_config(mode="central", budget=8.0, rounds=4))
    ledger = h.coord.privacy
    assert ledger is not None and ledger.calibrated
    h.join(*ALL)
    for _ in range(4):
        _round(h)
    assert h.coord.completed == 4 and h.coord.exit_reason == "training finished"
    final = h.records[-1].epsilon
    assert final is not None and 7.5 < final <= 8.0  # the budget is used, never exceeded
    assert compute_epsilon(1.0, ledger.sigma * 0.98, 4, 1e-5) > 8.0  # and sigma is not wastefully large


def test_record_mode_sends_dp_sgd_settings_and_charges_its_steps() -> None:
    h = CoordinatorHarness(_config(mode="record", noise_multiplier=1.1, clip=2.0, sampling_rate=0.25))
    tasks = tasked(h, h.join(*ALL))
    train = next(iter(tasks.values())).config["train"]
    assert (train["dp_clip"], train["dp_noise_multiplier"], train["dp_sampling_rate"]) == (2.0, 1.1, 0.25)
    steps = h.coord.config.training.local_epochs * 4
    _round(h)
    assert h.records[0].epsilon == pytest.approx(compute_epsilon(0.25, 1.1, steps, 1e-5), rel=1e-12)


def test_a_resumed_broker_continues_the_same_accountant(tmp_path: Path) -> None:
    config = _config(mode="central", noise_multiplier=2.0, rounds=6)
    with RoundStore(tmp_path / "s.db") as store:
        store.set_meta("config", config.to_dict(resolved=True))
        store.save_initial(harness_weights())
        h = CoordinatorHarness(config, store=store)
        h.join(*ALL)
        _round(h)
        _round(h)
        # Round 3 has started (and been charged) when the broker "dies".
        assert h.coord.round is not None and h.coord.round.round_id == 3
        charged = h.coord.privacy.epsilon()  # type: ignore[union-attr]
        restored = CoordinatorHarness(config, store=store)
        _resume(store, config, restored.coord)
    ledger = restored.coord.privacy
    assert ledger is not None and ledger.rounds_charged == 3
    assert ledger.epsilon() == charged == pytest.approx(compute_epsilon(1.0, 2.0, 3, 1e-5), rel=1e-12)
    assert restored.coord.next_round_id == 4  # round 3 is burnt, never rerun; the next round is charged anew


def test_privacy_settings_are_validated_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match="privacy.noise_multiplier"):
        _config(mode="central")
    with pytest.raises(ConfigError, match="privacy.mode"):
        FederatedConfig(privacy_budget=1.0, privacy=PrivacyConfig(mode="none"))
    with pytest.raises(ConfigError, match="privacy.mode.*secure aggregation"):
        FederatedConfig(num_clients=4, secure=SecureConfig(enabled=True),
                        privacy=PrivacyConfig(mode="central", noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="privacy.mode.*'other'"):
        _config(mode="other", noise_multiplier=1.0)
    # The seed's server quickstart sets only privacy_budget: central DP, calibrated.
    assert FederatedConfig(privacy_budget=1.0).privacy.mode == "central"
    assert FederatedConfig(privacy_budget=1.0).to_dict()["privacy"]["mode"] is None
    assert math.isfinite(FederatedConfig(privacy_budget=1.0).privacy.clip)


def test_adaptive_clipping_moves_the_clip_towards_the_median_norm_and_survives_a_resume(tmp_path: Path) -> None:
    config = _config(mode="central", noise_multiplier=1.0, clip=0.01, adaptive_clip=True, clip_learning_rate=1.0,
                     rounds=10)
    with RoundStore(tmp_path / "s.db") as store:
        store.set_meta("config", config.to_dict(resolved=True))
        store.save_initial(harness_weights())
        h = CoordinatorHarness(config, store=store)
        ledger = h.coord.privacy
        assert ledger is not None and ledger.clipper is not None
        assert ledger.update_sigma > ledger.sigma  # the count's noise is paid for on the update
        h.join(*ALL)
        clips = [ledger.current_clip]
        for _ in range(8):
            _round(h, {"w1": 1.0, "w2": 1.0, "w3": 1.0})  # norms ~3.2, far above the clip
            clips.append(ledger.current_clip)
        restored = CoordinatorHarness(config, store=store)
        _resume(store, config, restored.coord)
    # Every update was clipped, so C grows: by exp(0.5) a round in expectation; the count's noise (std 1/3
    # on the fraction) makes single steps wobble, and 8 steps reach x2 except with probability ~2e-4.
    assert clips[-1] > clips[0] * 2
    assert restored.coord.privacy.current_clip == pytest.approx(clips[-1])  # type: ignore[union-attr]
    # Accounting is unchanged: the pair (noised count, noised update) is a Gaussian mechanism of sigma.
    assert h.records[-1].epsilon == pytest.approx(compute_epsilon(1.0, 1.0, 8, 1e-5), rel=1e-12)

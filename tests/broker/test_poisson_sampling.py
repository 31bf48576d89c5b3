"""Poisson client sampling (``selection: poisson``, issue 15): the config's checks, the sampler's rate and
secrecy, and the rounds it gives under central DP (the expected-cohort denominator, every sample
released, amplified accounting, the budget, a resume) and without it (a sample too small is not run)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import CoordinatorHarness, harness_config, harness_weights
from support.randomness import refuse_statistical_rng

from federated.broker.planning import fewest_to_start
from federated.broker.selection import Selector
from federated.broker.service import _resume
from federated.broker.store import RoundStore
from federated.config import ConfigError, FederatedConfig, PrivacyConfig, SecureConfig
from federated.privacy import compute_epsilon

DELTA = 1e-5
IDS = [f"w{i:03d}" for i in range(400)]


def _config(q: float, n: int = 3, **kw: Any) -> FederatedConfig:
    privacy = kw.pop("privacy", PrivacyConfig(mode="central", noise_multiplier=kw.pop("sigma", 1.0), clip=1.0))
    return harness_config(num_clients=n, clients_per_round=None, selection="poisson", client_sampling_rate=q,
                          privacy=privacy, **kw)


def _answer_all(h: CoordinatorHarness, fill: float = 0.1) -> None:
    rnd = h.coord.round
    assert rnd is not None
    values = {k: np.full(v.shape, fill, np.float32) for k, v in harness_weights().items()}
    for wid in sorted(rnd.cohort):
        h.send(wid, h.update(wid, values))
    h.advance(0.5, alive=sorted(h.coord.registry.live_ids()))


# ------------------------------------------------------------------------------------------------ config


def test_the_config_names_the_field_and_its_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"client_sampling_rate.*selection poisson needs it.*\(0, 1\]"):
        FederatedConfig(selection="poisson")
    with pytest.raises(ConfigError, match=r"client_sampling_rate.*\(0.0, 1.0\]"):
        FederatedConfig(selection="poisson", client_sampling_rate=1.5)
    with pytest.raises(ConfigError, match=r"client_sampling_rate.*\(0.0, 1.0\]"):
        FederatedConfig(selection="poisson", client_sampling_rate=0.0)
    with pytest.raises(ConfigError, match="client_sampling_rate.*selection 'random'"):
        FederatedConfig(client_sampling_rate=0.1)
    with pytest.raises(ConfigError, match="clients_per_round.*every client may be drawn"):
        FederatedConfig(num_clients=100, clients_per_round=10, selection="poisson", client_sampling_rate=0.1)
    with pytest.raises(ConfigError, match="selection.*random, performance, adaptive, poisson"):
        FederatedConfig(selection="bernoulli")
    config = FederatedConfig(num_clients=1000, selection="poisson", client_sampling_rate=0.05)
    assert config.clients_per_round == 1000 and config.expected_cohort == pytest.approx(50.0)


def test_a_central_poisson_round_is_started_whatever_the_size_of_its_sample() -> None:
    assert fewest_to_start(_config(0.5)) == 0
    assert fewest_to_start(_config(0.5, privacy=PrivacyConfig(mode="none"))) == 2
    assert fewest_to_start(harness_config()) == 2
    secure = FederatedConfig(num_clients=10, selection="poisson", client_sampling_rate=0.5, min_clients=2,
                             secure=SecureConfig(enabled=True))
    assert fewest_to_start(secure) == 3


# ----------------------------------------------------------------------------------------------- sampler


def test_each_worker_joins_at_the_sampling_rate() -> None:
    # 400 workers x 100 rounds = 40,000 independent draws at q = 0.2: the count is Binomial(40000, 0.2),
    # mean 8,000, std 80. A margin of 6 std fails an honest sampler with probability 2e-9; the per-worker
    # counts (Binomial(100, 0.2) each) have mean 20 and std 4, and no worker may be left out entirely
    # (probability 0.8^100 = 2e-10 per worker, 8e-8 for all 400).
    q, rounds = 0.2, 100
    sel = Selector("poisson", random.Random(0), sampling_rate=q)
    counts = dict.fromkeys(IDS, 0)
    sizes = []
    for r in range(rounds):
        sample = sel.select(IDS, len(IDS), r)
        assert len(set(sample)) == len(sample) and set(sample) <= set(IDS)
        sizes.append(len(sample))
        for w in sample:
            counts[w] += 1
    total, draws = sum(sizes), len(IDS) * rounds
    std = math.sqrt(draws * q * (1 - q))
    assert abs(total - draws * q) < 6 * std
    assert min(counts.values()) > 0
    # The cohort's size varies as Binomial(400, 0.2) (std 8), not fixed: 100 rounds of one size would
    # have probability below 0.05^99.
    assert len(set(sizes)) > 1


def test_the_sample_is_drawn_from_the_os_csprng_not_the_brokers_seeded_generator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two brokers with the same seed draw different samples: 64 workers at q = 0.5 agree by chance with
    # probability 2^-64.
    a = Selector("poisson", random.Random(7), sampling_rate=0.5).select(IDS[:64], 64, 1)
    b = Selector("poisson", random.Random(7), sampling_rate=0.5).select(IDS[:64], 64, 1)
    assert a != b
    seeded = random.Random(7)
    sel = Selector("poisson", seeded, sampling_rate=0.5)
    state = seeded.getstate()
    refuse_statistical_rng(monkeypatch, "a Poisson sample must be secret; a seeded generator is predictable")
    sel.select(IDS[:64], 64, 1)
    assert seeded.getstate() == state


def test_the_selector_refuses_a_missing_rate() -> None:
    with pytest.raises(ValueError, match="sampling rate"):
        Selector("poisson", random.Random(0))
    with pytest.raises(ValueError, match="sampling rate"):
        Selector("poisson", random.Random(0), sampling_rate=0.0)


# --------------------------------------------------------------------------------------- central rounds


def test_central_poisson_divides_the_noised_sum_by_the_expected_cohort_and_charges_the_amplified_round() -> None:
    # q = 1 keeps the sample (all three) certain here; the denominator is q * num_clients = 3 either way, and
    # 0.5 below checks that it is q * N, not the realised count.
    h = CoordinatorHarness(_config(1.0, sigma=1e-6))
    h.join("w1", "w2", "w3")
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    _answer_all(h, fill=100.0)  # norms far above the clip: each clipped to 1
    step = np.concatenate([(h.coord.weights[k] - before[k]).ravel() for k in before])
    assert np.linalg.norm(step) == pytest.approx(3 / 3, rel=1e-3)
    assert h.records[0].epsilon == pytest.approx(compute_epsilon(1.0, 1e-6, 1, DELTA), rel=1e-9)


def test_the_denominator_is_q_times_the_clients_whatever_the_realised_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    h = CoordinatorHarness(_config(0.5, sigma=1e-6))
    monkeypatch.setattr(h.coord.selector, "poisson_sample", lambda live, q: ["w1", "w2", "w3"])
    h.join("w1", "w2", "w3")
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    _answer_all(h, fill=100.0)
    step = np.concatenate([(h.coord.weights[k] - before[k]).ravel() for k in before])
    # Three unit-norm updates in the same direction over the expected cohort 1.5, not over 3.
    assert np.linalg.norm(step) == pytest.approx(3 / 1.5, rel=1e-3)
    assert h.records[0].epsilon == pytest.approx(compute_epsilon(0.5, 1e-6, 1, DELTA), rel=1e-9)


def test_an_empty_sample_still_releases_noise_and_is_charged() -> None:
    # q = 1e-9: three workers are all left out except with probability 3e-9.
    h = CoordinatorHarness(_config(1e-9, sigma=1.0))
    h.join("w1", "w2", "w3")
    before = {k: v.copy() for k, v in h.coord.weights.items()}
    h.advance(1.0, alive=["w1", "w2", "w3"])
    assert h.records, "the round of an empty sample was not run"
    record = h.records[0]
    assert record.status == "complete" and record.participants == ()
    assert record.epsilon == pytest.approx(compute_epsilon(1e-9, 1.0, 1, DELTA), rel=1e-9)
    moved = np.concatenate([(h.coord.weights[k] - before[k]).ravel() for k in before])
    assert np.all(moved != 0)  # noise of std sigma * clip / (q N) = 3e8: the model is only noise


def test_a_sampled_round_with_every_worker_gone_is_released_not_failed() -> None:
    h = CoordinatorHarness(_config(1.0, sigma=1.0))
    h.join("w1", "w2", "w3")
    assert h.coord.round is not None
    h.advance(h.coord.config.broker.round_timeout_s + 1, alive=["w1", "w2", "w3"])  # no one answers
    assert h.records[0].status == "complete" and h.records[0].survivors == ()


def test_a_small_sample_without_central_dp_is_not_run_and_costs_nothing() -> None:
    config = _config(1e-9, privacy=PrivacyConfig(mode="record", noise_multiplier=1.0))
    h = CoordinatorHarness(config)
    h.join("w1", "w2", "w3")
    h.advance(3.0, alive=["w1", "w2", "w3"])
    assert h.coord.round is None and not h.records
    assert h.coord.privacy is not None and h.coord.privacy.rounds_charged == 0
    assert h.coord.next_round_id == 1  # no round id was burnt


def test_the_budget_stops_poisson_rounds_before_exceeding_it() -> None:
    budget = compute_epsilon(1.0, 3.0, 2, DELTA) * 1.001  # q = 1 here: two rounds fit, not three
    h = CoordinatorHarness(_config(1.0, sigma=3.0, privacy_budget=budget, num_rounds=10))
    h.join("w1", "w2", "w3")
    for _ in range(2):
        _answer_all(h)
    h.advance(2.0, alive=["w1", "w2", "w3"])
    ledger = h.coord.privacy
    assert ledger is not None and ledger.rounds_charged == 2 and not ledger.allows_next_round()
    assert ledger.epsilon() <= budget
    assert [r.round for r in h.records if r.epsilon is not None][:2] == [1, 2]


def test_a_resumed_broker_continues_the_poisson_accountant(tmp_path: Path) -> None:
    config = _config(0.999, sigma=2.0, num_rounds=6)
    with RoundStore(tmp_path / "s.db") as store:
        store.set_meta("config", config.to_dict(resolved=True))
        store.save_initial(harness_weights())
        h = CoordinatorHarness(config, store=store)
        h.join("w1", "w2", "w3")
        _answer_all(h)
        _answer_all(h)
        assert h.coord.round is not None  # round 3 charged, under way when the broker "dies"
        charged = h.coord.privacy.epsilon()  # type: ignore[union-attr]
        restored = CoordinatorHarness(config, store=store)
        _resume(store, config, restored.coord)
    ledger = restored.coord.privacy
    assert ledger is not None and ledger.rounds_charged == 3 and ledger.amplified
    assert ledger.epsilon() == charged == pytest.approx(compute_epsilon(0.999, 2.0, 3, DELTA), rel=1e-12)

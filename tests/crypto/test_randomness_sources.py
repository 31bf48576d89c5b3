"""Secure aggregation's secrets come from the OS CSPRNG, its masks only from `cryptography`.

README / :mod:`federated.crypto.secagg_worker`: keys, self-mask seeds, Shamir coefficients and nonces come
from ``os.urandom`` or `cryptography` (OpenSSL's CSPRNG), and masks from the AES-CTR PRG of
:mod:`federated.crypto.prg`; Python's ``random`` and NumPy's generators, which a seed makes predictable,
are never used. Checked three ways: a whole round (one worker dropping after key sharing, so both kinds of
secret are rebuilt) runs with every statistical generator made to raise and gives the exact sum; the
self-mask seed is the bytes ``os.urandom`` returned (seen through the worker's public commitment to it);
and identically reseeded statistical generators do not repeat a worker's keys or seed.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from support.randomness import refuse_statistical_rng

from federated.crypto.params import SecAggParams, b_commitment
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_broker import SecAggBroker
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import ConsistencyCheck, Roster, Shares, UnmaskRequest

ROUND = 3
IDS = ("w0", "w1", "w2", "w3", "w4")
# Complete graph of 5; threshold 3 (2t > k, as every worker's floor requires).
PARAMS = SecAggParams(threshold=3, degree=4, clip=1.0, weight_cap=1, frac_bits=0, n_max=5, vector_length=6)


@pytest.fixture
def no_statistical_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ``random`` and NumPy's generators raise if used."""
    refuse_statistical_rng(monkeypatch, "secure aggregation must use the OS CSPRNG or `cryptography`")


def _round(inputs: dict[str, np.ndarray], vanish: str) -> SecAggBroker:
    """A full round through the real state machines; ``vanish`` leaves after sharing its keys."""
    keys = {w: generate_identity() for w in IDS}
    broker = SecAggBroker(ROUND, IDS, PARAMS, {w: pub for w, (_, pub) in keys.items()})
    workers = {w: SecAggWorker(w, keys[w][0], ROUND, PARAMS) for w in IDS}
    for w in IDS:
        broker.receive(w, workers[w].advertise())
    for _ in range(10):  # five stages to close; a bound, not a wait
        if broker.stage in ("done", "aborted"):
            break
        for w, msg in broker.advance():
            worker = workers[w]
            if isinstance(msg, Roster):
                broker.receive(w, worker.on_roster(msg))
            elif isinstance(msg, Shares):
                worker.on_shares(msg)
                if w == vanish:
                    broker.drop(w, "left")
                else:
                    broker.receive(w, worker.masked_input(inputs[w]))
            elif isinstance(msg, ConsistencyCheck):
                broker.receive(w, worker.on_consistency(msg))
            elif isinstance(msg, UnmaskRequest):
                broker.receive(w, worker.on_unmask(msg))
            else:
                pytest.fail(f"unexpected {type(msg).__name__}")
    return broker


def test_a_whole_round_runs_without_any_statistical_generator(no_statistical_rng: None) -> None:
    inputs = {w: np.arange(i * 10, i * 10 + PARAMS.vector_length, dtype=np.uint32) for i, w in enumerate(IDS)}
    broker = _round(inputs, vanish="w2")
    assert broker.stage == "done", broker.error
    assert broker.result is not None and broker.result.survivors == ("w0", "w1", "w3", "w4")
    expected = sum((inputs[w].astype(np.uint64) for w in broker.result.survivors), np.zeros(6, np.uint64))
    np.testing.assert_array_equal(broker.result.total, expected.astype(np.uint32))


def test_the_self_mask_seed_is_what_os_urandom_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    returned: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        value = real(n)
        returned.append(value)
        return value

    monkeypatch.setattr(os, "urandom", recording)
    worker = SecAggWorker("w0", generate_identity()[0], ROUND, PARAMS)
    # The worker publishes (and signs) a commitment to b: it is the commitment to one of the 32-byte draws.
    assert worker.b_commit in {b_commitment(ROUND, "w0", v) for v in returned if len(v) == 32}


def test_reseeded_statistical_generators_do_not_repeat_keys_or_seeds() -> None:
    seen = []
    for _ in range(2):
        random.seed(7)
        np.random.seed(7)  # the legacy global generator: what a careless implementation would draw from
        worker = SecAggWorker("w0", generate_identity()[0], ROUND, PARAMS)
        seen.append((worker.c_pk, worker.s_pk, worker.b_commit))
    # 256-bit values: equal by chance with probability 2^-256 (the keys: about 2^-252).
    assert all(a != b for a, b in zip(*seen, strict=True))

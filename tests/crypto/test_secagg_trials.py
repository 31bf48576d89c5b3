"""The secure-aggregation state machines, worker and broker, driven in memory with real cryptography.

Random trials over cohort size, graph degree, threshold and which workers drop at which stage: every
trial must end with the bit-exact sum (mod 2^32) of the survivors' inputs, or with a clean abort exactly
when too few workers remain to finish. Plus the instrumented check that the broker never holds an
unmasked input, and the workers' refusals of bad requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from support import round_trip

from federated.crypto.errors import CryptoError, ProtocolViolation, SignatureError
from federated.crypto.params import SecAggParams
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_broker import SecAggBroker
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import Roster, UnmaskRequest

STAGES = ("advertise", "roster", "shares", "consistency", "unmask")


@dataclass
class Trial:
    n: int
    degree: int
    threshold: int
    length: int
    drops: dict[str, set[str]]
    seen_by_broker: list[np.ndarray] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)
    ring_bits: int = 32


def run(trial: Trial, rng: random.Random) -> tuple[SecAggBroker, dict[str, np.ndarray], set[str]]:
    ids = [f"w{i:02d}" for i in range(trial.n)]
    params = SecAggParams(threshold=trial.threshold, degree=trial.degree, clip=1.0, weight_cap=1, frac_bits=0,
                          n_max=trial.n, vector_length=trial.length, ring_bits=trial.ring_bits)
    keys = {w: generate_identity() for w in ids}
    broker = SecAggBroker(7, ids, params, {w: pub for w, (_, pub) in keys.items()})
    workers = {w: SecAggWorker(w, keys[w][0], 7, params) for w in ids}
    inputs = {w: np.array([rng.getrandbits(32) for _ in range(trial.length)], dtype=np.uint32) for w in ids}

    for w in ids:
        if w in trial.drops["advertise"]:
            broker.drop(w, "test")
        else:
            broker.receive(w, round_trip(workers[w].advertise()))
    for stage in STAGES[1:]:
        out = broker.advance()
        if broker.stage == "aborted":
            return broker, inputs, set()
        for w, msg in out:
            msg = round_trip(msg)
            if w in trial.drops[stage]:
                broker.drop(w, "test")
                continue
            try:
                if stage == "roster":
                    broker.receive(w, round_trip(workers[w].on_roster(msg)))
                elif stage == "shares":
                    workers[w].on_shares(msg)
                    # Half mask a copy in place (as the worker loop does), half leave the input alone.
                    masked = round_trip(workers[w].masked_input(inputs[w].copy(), in_place=rng.random() < 0.5))
                    trial.seen_by_broker.append(masked.masked)
                    broker.receive(w, masked)
                elif stage == "consistency":
                    broker.receive(w, round_trip(workers[w].on_consistency(msg)))
                else:
                    broker.receive(w, round_trip(workers[w].on_unmask(msg)))
            except CryptoError:
                # The worker refuses a step against its floor (too few share senders) and leaves the
                # round, as the real worker does; the broker counts it as dropped at this stage.
                trial.refused.add(w)
    broker.advance()
    return broker, inputs, set()


def chance_agreements(coords: int, ring_bits: int, pairs: int, budget: float) -> tuple[int, float]:
    """How many coordinates a masked input may share with an input by chance, and the false-alarm odds.

    If masks are uniform, the coordinates where a masked input equals a given input number
    ``Binomial(coords, 2^-ring_bits)``. Returns the smallest ``k`` with ``pairs * P(X > k) <= budget``
    (a union bound over the ``pairs`` masked-input/input comparisons of a run, which need not be
    independent) and that probability. The tail is summed term by term, not as ``1 - cdf``, which
    loses tails below 1e-16.
    """
    p = 2.0**-ring_bits
    terms = [(1.0 - p) ** coords]  # P(X = 0)
    # P(X = i + 1) = P(X = i) * (coords - i) / (i + 1) * p / (1 - p)
    for i in range(min(coords, 200)):
        terms.append(terms[-1] * (coords - i) / (i + 1) * p / (1.0 - p))
    for k in range(len(terms) - 1):
        false_alarm = pairs * math.fsum(terms[k + 1:])
        if false_alarm <= budget:
            return k, false_alarm
    raise ValueError(f"no bound of at most {len(terms) - 2} agreements meets {budget} "
                     f"for {coords} coordinates")


def feasible(trial: Trial, broker: SecAggBroker) -> bool:
    """Oracle: can the protocol finish with these dropouts?"""
    t = trial.threshold
    u1 = {f"w{i:02d}" for i in range(trial.n)} - trial.drops["advertise"]
    if len(u1) < t + 1:
        return False
    graph = broker.graph  # depends on the session, which only the run knows
    if not graph or min(len(v) for v in graph.values()) < t:
        return False
    u2 = u1 - trial.drops["roster"]
    if len(u2) < t + 1:
        return False
    # A worker whose neighbours in U2 number fewer than t refuses to mask (its floor: |U2| >= t).
    u3 = u2 - trial.drops["shares"] - {w for w in u2 if len(set(graph[w]) & u2) < t}
    if len(u3) < t:
        return False
    u4 = u3 - trial.drops["consistency"]
    if len(u4) < t:
        return False
    u5 = u4 - trial.drops["unmask"]
    return all(len(set(graph[u]) & u5) >= t for u in u2)


def random_trial(rng: random.Random, ring_bits: int = 32) -> Trial:
    n = rng.randint(3, 10)
    degree = n - 1 if rng.random() < 0.5 or n < 5 else rng.choice([d for d in range(2, n - 1, 2)] or [n - 1])
    threshold = rng.randint(degree // 2 + 1, degree)  # a worker refuses 2t <= k (SafetyFloor)
    ids = [f"w{i:02d}" for i in range(n)]
    rate = rng.choice([0.0, 0.1, 0.25, 0.4])
    drops = {s: {w for w in ids if rng.random() < rate / 2} for s in STAGES}
    return Trial(n, degree, threshold, rng.randint(1, 24), drops, ring_bits=ring_bits)


@pytest.mark.slow
@pytest.mark.parametrize(("ring_bits", "trials"), [(32, 1000), (16, 300)])
def test_random_trials_give_the_exact_sum_or_a_clean_abort(ring_bits: int, trials: int) -> None:
    rng = random.Random(20261128 + ring_bits)
    outcomes = {"done": 0, "aborted": 0}
    for _ in range(trials):
        trial = random_trial(rng, ring_bits)
        broker, inputs, _ = run(trial, rng)
        outcomes[broker.stage] += 1
        if broker.stage == "done":
            assert broker.result is not None
            survivors = set(broker.result.survivors)
            expected = np.zeros(trial.length, dtype=np.uint32)
            for w in survivors:
                expected += inputs[w]
            # 16-bit sums: the sum of the full 32-bit inputs, reduced mod 2^16.
            expected &= np.uint32((1 << ring_bits) - 1)
            np.testing.assert_array_equal(broker.result.total, expected)
            all_ids = {f"w{i:02d}" for i in range(trial.n)}
            assert survivors == (all_ids - trial.drops["advertise"] - trial.drops["roster"] - trial.drops["shares"]
                                 - trial.refused)
            assert feasible(trial, broker)
        else:
            assert broker.stage == "aborted" and broker.error
            assert not feasible(trial, broker), f"aborted although feasible: {trial} {broker.error}"
    # Both outcomes must be exercised (five stages of dropouts and majority thresholds abort often).
    assert outcomes["done"] > trials // 4 and outcomes["aborted"] > trials // 50, outcomes


def test_broker_never_holds_an_unmasked_input() -> None:
    rng = random.Random(1)
    trial = Trial(6, 5, 3, 50_000, {s: set() for s in STAGES} | {"shares": {"w05"}})
    broker, inputs, _ = run(trial, rng)
    assert broker.stage == "done"
    assert len(trial.seen_by_broker) == 5
    # Equal coordinates happen only by chance (2^-32 each): at most 1 of 50,000 in each of the 30 pairs, or a
    # false alarm with probability 30 * P(Binomial(50,000, 2^-32) > 1) = 2.0e-9 a run (chance_agreements).
    most, false_alarm = chance_agreements(50_000, 32, len(trial.seen_by_broker) * len(inputs), budget=1e-5)
    assert most == 1 and false_alarm == pytest.approx(2.0e-9, rel=0.02)
    for masked in trial.seen_by_broker:
        for x in inputs.values():
            assert np.count_nonzero(masked == x) <= most  # unmasked, its own input would agree everywhere
        # Masked inputs look uniform: byte histogram passes a chi-square test
        # (255 dof: P(chi2 > 400) = 1.7e-8).
        counts = np.bincount(masked.view(np.uint8), minlength=256)
        expected = masked.nbytes / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 400, chi2
        # ... and so does each bit position of the 32-bit words (0.02 is 8.9 standard deviations: 4e-19 each).
        ones = np.unpackbits(masked.view(np.uint8)).reshape(-1, 32).mean(axis=0)
        assert np.all(np.abs(ones - 0.5) < 0.02)


def test_sixteen_bit_masked_inputs_are_uniform_and_never_the_input() -> None:
    rng = random.Random(2)
    trial = Trial(6, 5, 3, 50_000, {s: set() for s in STAGES}, ring_bits=16)
    broker, inputs, _ = run(trial, rng)
    assert broker.stage == "done"
    # Each of the 36 masked-input/input pairs agrees on Binomial(50,000, 2^-16) coordinates by chance
    # (mean 0.76); allowing at most 8, a run fails by chance with probability 36 * P(X > 8) = 4.4e-6
    # (chance_agreements: exact binomial tail, union bound over the pairs). The old bound of 5 failed
    # 36 * P(X > 5) = 0.5% of runs.
    most, false_alarm = chance_agreements(50_000, 16, len(trial.seen_by_broker) * len(inputs), budget=1e-5)
    assert most == 8 and false_alarm == pytest.approx(4.4e-6, rel=0.01)
    for masked in trial.seen_by_broker:
        assert masked.dtype == np.uint16  # half the bytes of a 32-bit masked input
        for x in inputs.values():
            assert np.count_nonzero(masked == (x & 0xFFFF)) <= most  # unmasked: all 50,000 of its own
        counts = np.bincount(masked.view(np.uint8), minlength=256)
        expected = masked.nbytes / 256
        assert float(((counts - expected) ** 2 / expected).sum()) < 400
        ones = np.unpackbits(masked.view(np.uint8)).reshape(-1, 16).mean(axis=0)
        assert np.all(np.abs(ones - 0.5) < 0.02)


def test_broker_refuses_a_masked_input_of_the_wrong_width() -> None:
    broker, workers = _masking_workers()
    good = workers["w0"].masked_input(np.zeros(4, np.uint32))
    narrow = type(good)(good.worker_id, good.round_id, good.masked.astype(np.uint16), 0.0)
    with pytest.raises(ProtocolViolation, match="uint32"):
        broker.receive("w0", round_trip(narrow))


def _ready_workers(n: int = 4, t: int = 2) -> tuple[SecAggBroker, dict[str, SecAggWorker], list]:
    ids = [f"w{i}" for i in range(n)]
    params = SecAggParams(t, n - 1, 1.0, 1, 0, n, 4)
    keys = {w: generate_identity() for w in ids}
    broker = SecAggBroker(1, ids, params, {w: pub for w, (_, pub) in keys.items()})
    workers = {w: SecAggWorker(w, keys[w][0], 1, params) for w in ids}
    for w in ids:
        broker.receive(w, workers[w].advertise())
    return broker, workers, broker.advance()


def _masking_workers() -> tuple[SecAggBroker, dict[str, SecAggWorker]]:
    """A round of four past key sharing: every worker holds its shares and may send its masked input."""
    broker, workers, out = _ready_workers()
    for w, msg in out:
        broker.receive(w, workers[w].on_roster(msg))
    for w, msg in broker.advance():
        workers[w].on_shares(msg)
    return broker, workers


def test_worker_refuses_a_roster_with_a_forged_signature() -> None:
    _, workers, out = _ready_workers()
    roster: Roster = out[0][1]
    forged = roster.signature.copy()
    forged[1, 0] ^= 1
    bad = Roster(roster.round_id, roster.ids, roster.c_pk, roster.s_pk, roster.identity, forged, roster.b_commit)
    with pytest.raises(SignatureError):
        workers["w0"].on_roster(bad)


def test_a_remembered_roster_check_never_passes_a_forgery() -> None:
    # Workers of one process share the roster check; after one accepted the real roster, a copy with
    # one signature bit flipped (or one key swapped for another worker's) must still be refused.
    _, workers, out = _ready_workers()
    roster: Roster = out[0][1]
    workers["w0"].on_roster(roster)
    forged = roster.signature.copy()
    forged[2, 5] ^= 0x10
    with pytest.raises(SignatureError):
        workers["w1"].on_roster(Roster(roster.round_id, roster.ids, roster.c_pk, roster.s_pk, roster.identity, forged,
                                       roster.b_commit))
    swapped = roster.s_pk.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    with pytest.raises(SignatureError):
        workers["w1"].on_roster(Roster(roster.round_id, roster.ids, roster.c_pk, swapped, roster.identity,
                                       roster.signature, roster.b_commit))
    workers["w1"].on_roster(roster)  # the real one is still fine


def test_worker_refuses_overlapping_small_and_repeated_unmask_requests() -> None:
    broker, workers = _masking_workers()
    for w, worker in workers.items():
        if w != "w3":  # w3 drops before masking: the others hold its mask-key shares
            broker.receive(w, worker.masked_input(np.zeros(4, np.uint32)))
    for w, check in broker.advance():
        broker.receive(w, workers[w].on_consistency(check))
    real: UnmaskRequest = broker.advance()[0][1]
    assert real.survivors == ("w0", "w1", "w2") and real.dropped == ("w3",)
    worker = workers["w0"]
    session = worker.session

    def request(survivors: tuple[str, ...], dropped: tuple[str, ...], *, round_id: int = 1,
                sess: bytes = session) -> UnmaskRequest:
        return UnmaskRequest(round_id, survivors, dropped, sess, real.signers, real.signatures)

    for bad in (request(("w0", "w1", "w2"), ("w2",)),   # overlap
                request(("w0",), ("w1", "w2", "w3")),   # fewer survivors than t, and not the signed set
                request(("w0", "w1", "w2"), ("w3",), round_id=2),   # another round
                request(("w0", "w1", "w2"), ("w3",), sess=bytes(32)),  # another session
                request(("w1", "w2", "w3"), ("w0",))):  # we are listed as dropped
        with pytest.raises(ProtocolViolation):
            worker.on_unmask(bad)
    answer = worker.on_unmask(real)
    assert set(answer.b_owners) == {"w1", "w2"} and answer.s_owners == ("w3",)
    with pytest.raises(ProtocolViolation):  # a second request could reveal both shares of someone
        worker.on_unmask(request(("w0", "w1", "w3"), ("w2",)))


def test_broker_refuses_out_of_stage_and_foreign_messages() -> None:
    broker, workers, out = _ready_workers()
    with pytest.raises(ProtocolViolation):  # a second advert in the share-keys stage
        broker.receive("w0", round_trip(workers["w0"].advertise() if workers["w0"].stage == "advertise" else
                                        SecAggWorker("w0", generate_identity()[0], 1, broker.params).advertise()))
    with pytest.raises(ProtocolViolation):  # w1's shares presented as w0's: wrong recipients
        broker.receive("w0", round_trip(workers["w1"].on_roster(out[1][1])))
    outsider = SecAggWorker("w9", generate_identity()[0], 1, broker.params)
    with pytest.raises(ProtocolViolation):
        broker.receive("w9", outsider.advertise())

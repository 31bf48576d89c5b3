"""A cheating broker against real worker sessions (issue 13): each attack a scripted broker can make on
the worker's protocol, through the real codec, ending in a refusal with no secret revealed.

Before these fixes each attack below worked: a worker masked with whatever SHARES it got (even none),
answered any unmask request for its session, signed nothing, accepted any threshold up to its degree,
re-ran a round it had already contributed to with a training seed the broker could compute, and added
whatever distributed noise the TASK named (none included). The broker-side checks against a cheating
*member* (a tampered share, chosen weights, unbounded sums) are at the end and in tests/broker/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import round_trip, secagg_params, secure_task, sends, through_codec, train_now, worker_session

from federated.crypto import shamir
from federated.crypto.floor import SafetyFloor
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_broker import SecAggBroker
from federated.protocol import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    Error,
    ErrorCode,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    UnmaskRequest,
    UnmaskShares,
)
from federated.worker.ledger import RoundLedger
from federated.worker.session import Train, WorkerSession


class Federation:
    """``n`` real sessions and a broker script: the honest broker machine supplies well-formed messages,
    and the test decides what each worker is really sent."""

    def __init__(self, n: int, p: SecAggParams | None = None, **session_kwargs: Any) -> None:
        self.p = p or secagg_params(n)
        self.ids = [f"w{i}" for i in range(n)]
        self.sessions: dict[str, WorkerSession] = {w: worker_session(w, **session_kwargs) for w in self.ids}
        self.broker = SecAggBroker(1, self.ids, self.p, {w: bytes.fromhex(s.identity_hex)
                                                          for w, s in self.sessions.items()})
        self.jobs: dict[str, list[Any]] = {}
        self.refusals: dict[str, Error] = {}

    def deliver(self, wid: str, msg: Any) -> list[Any]:
        """Send ``msg`` to ``wid``'s session; its answers (errors recorded, not returned)."""
        out = []
        for answer in sends(self.sessions[wid].on_message(round_trip(msg))):
            if isinstance(answer, Error):
                self.refusals[wid] = answer
            else:
                out.append(answer)
        return out

    def start(self) -> None:
        for i, w in enumerate(self.ids):
            actions = self.sessions[w].on_message(secure_task(1, self.p, i, len(self.ids)))
            self.jobs[w] = [a for a in actions if isinstance(a, Train)]
            (advert,) = sends(actions)
            assert isinstance(advert, AdvertiseKeys)
            self.broker.receive(w, advert)

    def to_shares(self) -> dict[str, Shares]:
        """Run up to the SHARES the honest broker would route; returns them (undelivered)."""
        self.start()
        for w, roster in self.broker.advance():
            (share_keys,) = self.deliver(w, roster)
            self.broker.receive(w, share_keys)
        return dict(self.broker.advance())

    def to_consistency(self) -> dict[str, ConsistencyCheck]:
        """Run until every masked input is in; returns the honest CONSISTENCY_CHECKs (undelivered)."""
        for w, shares in self.to_shares().items():
            assert self.deliver(w, shares) == []
            (masked,) = [through_codec(a.frames)
                         for a in train_now(self.sessions[w], self.jobs[w], 0.1 * (1 + int(w[1:])))]
            assert isinstance(masked, MaskedInput)
            self.broker.receive(w, masked)
        return dict(self.broker.advance())

    def signed(self, wid: str, check: ConsistencyCheck) -> ConsistencySignature:
        (signature,) = self.deliver(wid, check)
        assert isinstance(signature, ConsistencySignature)
        return signature


def refused(fed: Federation, wid: str, code: ErrorCode = ErrorCode.SECAGG_REFUSED) -> str:
    error = fed.refusals[wid]
    assert error.code == code, error
    assert fed.sessions[wid].secure is None  # it left the round: nothing more will be answered
    return error.message


# -------------------------------------------------------------------------- 1. withheld shares


@pytest.mark.parametrize("senders", [0, 1])
def test_a_worker_refuses_to_mask_with_fewer_than_t_share_senders(senders: int) -> None:
    # The attack: send the target a SHARES with no (or too few) senders, so it masks with its self-mask
    # alone; then ask everyone for b-shares ("all survived") and remove PRG(b): its exact input.
    fed = Federation(5)  # complete graph, k = 4, t = 3
    shares = fed.to_shares()
    honest = shares["w0"]
    cut = Shares(1, honest.senders[:senders], honest.ciphertexts[:senders])
    assert fed.deliver("w0", cut) == []
    assert "threshold" in refused(fed, "w0")
    # Its input is trained but is never masked or sent.
    assert train_now(fed.sessions["w0"], fed.jobs["w0"], 0.5) == []


# -------------------------------------------------------------------------- 2. split unmask requests


@pytest.mark.parametrize(("n", "threshold", "degree", "colluders"), [
    (3, 1, 2, 0),   # t = 1: any one holder gives either secret
    (5, 2, 4, 0),   # 2t = k: half say "survived", half "dropped"
    (6, 3, 5, 1),   # majority t of an odd k plus one colluding neighbour
    (7, 4, 6, 2),   # a worker that assumes two colluders needs 2t > k + 2
])
def test_a_worker_refuses_a_threshold_that_lets_both_secrets_be_rebuilt(n: int, threshold: int, degree: int,
                                                                       colluders: int) -> None:
    fed = Federation(n, secagg_params(n, threshold=threshold, degree=degree),
                     floor=SafetyFloor(assumed_colluders=colluders))
    fed.start()
    for w, roster in fed.broker.advance():
        assert fed.deliver(w, roster) == []
        assert "2 * threshold" in refused(fed, w)


def test_a_worker_refuses_fewer_neighbours_than_its_minimum_degree() -> None:
    fed = Federation(3, floor=SafetyFloor(min_degree=4))  # a worker that wants 4 pairwise masks
    fed.start()
    for w, roster in fed.broker.advance():
        assert fed.deliver(w, roster) == []
        assert "minimum" in refused(fed, w)


def test_split_survivor_sets_are_refused_by_the_consistency_check() -> None:
    # The attack: tell w0's neighbours in one group "w0 survived" (their b-shares of w0) and in the other
    # "w0 dropped" (their s-shares of w0): with both, the broker removes every mask from w0's input.
    fed = Federation(5)  # t = 3
    fed.to_consistency()
    session_id = fed.sessions["w0"].secure.machine.session  # type: ignore[union-attr]
    with_w0 = ConsistencyCheck(1, ("w0", "w1", "w2"), session_id)
    without_w0 = ConsistencyCheck(1, ("w1", "w2", "w3", "w4"), session_id)
    sig = {w: fed.signed(w, with_w0) for w in ("w0", "w1", "w2")}
    sig |= {w: fed.signed(w, without_w0) for w in ("w3", "w4")}

    def request(survivors: tuple[str, ...], dropped: tuple[str, ...], signers: tuple[str, ...]) -> UnmaskRequest:
        rows = np.array([np.frombuffer(sig[w].signature, np.uint8) for w in signers], np.uint8).reshape(-1, 64)
        return UnmaskRequest(1, survivors, dropped, session_id, signers, rows)

    # w3 signed the set without w0, but only two workers did (w3, w4): fewer than t.
    assert fed.deliver("w3", request(without_w0.survivors, ("w0",), ("w3", "w4"))) == []
    assert "threshold" in refused(fed, "w3")
    # w4 is shown w1's signature (over the other set) as if it were over this one: it does not verify.
    assert fed.deliver("w4", request(without_w0.survivors, ("w0",), ("w1", "w3", "w4"))) == []
    assert "does not verify" in refused(fed, "w4")
    # w1 signed "w0 survived"; asked to reveal w0's mask key under the other set, it refuses.
    assert fed.deliver("w1", request(without_w0.survivors, ("w0",), ("w1", "w2", "w0"))) == []
    assert "not the set this worker signed" in refused(fed, "w1")


def test_a_worker_signs_one_survivor_set_per_round() -> None:
    fed = Federation(4)
    checks = fed.to_consistency()
    fed.signed("w0", checks["w0"])
    other = ConsistencyCheck(1, ("w0", "w1", "w2"), checks["w0"].session)
    assert fed.deliver("w0", other) == []
    assert "expected stage" in refused(fed, "w0")


def test_a_worker_refuses_to_sign_a_survivor_set_below_its_floor() -> None:
    fed = Federation(5, floor=SafetyFloor(min_survivors=5))
    checks = fed.to_consistency()
    small = ConsistencyCheck(1, ("w0", "w1", "w2", "w3"), checks["w0"].session)  # w4 "dropped": 4 survivors
    assert fed.deliver("w0", small) == []
    assert "requires" in refused(fed, "w0")


def test_an_honest_consistency_round_unmasks_exactly() -> None:
    fed = Federation(5)
    for w, check in fed.to_consistency().items():
        fed.broker.receive(w, fed.signed(w, check))
    for w, request in fed.broker.advance():
        (answer,) = fed.deliver(w, request)
        assert isinstance(answer, UnmaskShares)
        fed.broker.receive(w, answer)
    fed.broker.advance()
    assert fed.broker.stage == "done" and not fed.refusals


# -------------------------------------------------------------------------- 5. tampered b share


def test_a_tampered_self_mask_share_among_exactly_t_aborts_instead_of_skewing_the_sum() -> None:
    # A cheating member shifts its share of w0's self-mask seed. With exactly t shares, Lagrange
    # interpolation gives a different "seed" that looks valid; only the commitment w0 signed shows it.
    fed = Federation(3)  # k = 2, t = 2: each seed has exactly t holders
    for w, check in fed.to_consistency().items():
        fed.broker.receive(w, fed.signed(w, check))
    for w, request in fed.broker.advance():
        (answer,) = fed.deliver(w, request)
        if w == "w1":
            row = list(answer.b_owners).index("w0")
            shifted = answer.b_shares.copy()
            shifted[row] = np.frombuffer(shamir.to_bytes((shamir.from_bytes(bytes(shifted[row])) + 1)
                                                         % shamir.PRIME), np.uint8)
            answer = UnmaskShares(answer.worker_id, 1, answer.b_owners, shifted, answer.s_owners, answer.s_shares)
        fed.broker.receive(w, answer)
    fed.broker.advance()
    assert fed.broker.stage == "aborted" and fed.broker.result is None
    assert "tampered" in fed.broker.error


# -------------------------------------------------------------------------- 6. rounds run twice


def test_a_replayed_round_is_refused_before_any_key_or_training(tmp_path: Path) -> None:
    # The attack: run round 1 again (same run), under another survivor set, and subtract the two sums.
    ledger = tmp_path / "w0.rounds"
    fed = Federation(4, ledger=None)
    fed.sessions["w0"].ledger = RoundLedger(ledger)
    fed.to_consistency()  # w0 sent its masked input for (run-a, round 1)
    again = fed.sessions["w0"].on_message(secure_task(1, fed.p, 0, 4))
    (error,) = sends(again)
    assert isinstance(error, Error) and error.code == ErrorCode.REPLAYED_ROUND
    assert not any(isinstance(a, Train) for a in again)  # no training, no advertised keys
    # A restarted worker (a new session over the same ledger file) refuses too ...
    restarted = worker_session("w0", ledger=RoundLedger(ledger))
    (error,) = sends(restarted.on_message(secure_task(1, fed.p, 0, 4)))
    assert error.code == ErrorCode.REPLAYED_ROUND
    # ... while the next round, or round 1 of another run, is fine.
    assert isinstance(sends(restarted.on_message(secure_task(2, fed.p, 0, 4)))[0], AdvertiseKeys)
    other_run = secure_task(1, fed.p, 0, 4, run_id="run-b")
    assert isinstance(sends(restarted.on_message(other_run))[0], AdvertiseKeys)


def test_a_round_left_before_masking_can_be_retried() -> None:
    # Nothing depending on the update left the worker, so a retried round reveals nothing new.
    fed = Federation(4)
    fed.to_shares()
    s = fed.sessions["w0"]
    s.connected()  # the connection dropped before the masked input
    assert isinstance(sends(s.on_message(secure_task(1, fed.p, 0, 4)))[0], AdvertiseKeys)


# -------------------------------------------------------------------------- 8. noise switched off


def test_a_worker_refuses_noise_too_large_to_draw() -> None:
    # Not a privacy attack but a cost one: mu = 1e15 would take 1e5 Poisson draws per coordinate.
    task = secure_task(1, secagg_params(5), 0, 5, privacy={"skellam_mu": 1e15})
    (error,) = sends(worker_session("w0").on_message(task))
    assert error.code == ErrorCode.BAD_TASK and "skellam_mu" in error.message


@pytest.mark.parametrize("privacy", [{"skellam_mu": 0}, {"skellam_mu": 1.0}])
def test_a_worker_with_a_noise_floor_refuses_distributed_noise_below_it(privacy: dict[str, Any]) -> None:
    s = worker_session("w0", min_noise=1.0)
    p = secagg_params(5)
    (error,) = sends(s.on_message(secure_task(1, p, 0, 5, privacy=privacy)))
    assert error.code == ErrorCode.BAD_TASK and "noise multiplier >= 1" in error.message


def test_a_worker_with_a_noise_floor_accepts_enough_distributed_noise() -> None:
    p = secagg_params(5)  # t = 3, clip 10, 2^16: sigma = sqrt(2 mu t) / (clip 2^16)
    mu = (1.0 * 10.0 * 2**16) ** 2 / (2 * 3)
    s = worker_session("w0", min_noise=1.0)
    actions = s.on_message(secure_task(1, p, 0, 5, privacy={"skellam_mu": mu * 1.001}))
    assert isinstance(sends(actions)[0], AdvertiseKeys)
    # Distributed noise under the floor's own survivor count: a worker demanding 5 survivors is
    # satisfied with less noise per worker (its smallest sum has more shares).
    s = worker_session("w0", min_noise=1.0, floor=SafetyFloor(min_survivors=5))
    assert isinstance(sends(s.on_message(secure_task(1, p, 0, 5, privacy={"skellam_mu": mu * 0.61})))[0],
                      AdvertiseKeys)


# -------------------------------------------------------------------------- 12. replayable sampler


def test_a_real_workers_training_seed_cannot_be_computed_or_replayed_by_the_broker() -> None:
    # DP-SGD's Poisson batches and the shuffle come from this seed: it must not follow from the run's
    # seed, round and id (all known to the broker), and a replayed TASK must not get the same one.
    fed = Federation(4)
    fed.start()
    first = fed.jobs["w0"][0].job.seed
    again = [a for a in worker_session("w0").on_message(secure_task(1, fed.p, 0, 4)) if isinstance(a, Train)]
    assert again[0].job.seed != first  # 2^-32 to collide by chance
    trained = train_now(fed.sessions["w1"], fed.jobs["w1"], 0.2)
    assert trained == []  # (its input waits for the shares)


def test_share_keys_sent_by_a_worker_go_only_to_its_neighbours() -> None:
    fed = Federation(6, secagg_params(6, degree=4))  # SecAgg+: 4 of the 5 others
    fed.start()
    for w, roster in fed.broker.advance():
        (share_keys,) = fed.deliver(w, roster)
        assert isinstance(share_keys, ShareKeys) and len(share_keys.recipients) == 4
        assert isinstance(roster, Roster)

"""Secure-aggregation guards that the mutation check (``benchmarks/mutation.py`` and its mutmut sweep)
found unguarded.

- A worker refuses shares from a sender that is not its neighbour (here: not in the roster at all).
- A worker signs, and so unmasks, only a survivor set that names it (README threat model: it refuses a
  request "that names itself as dropped"); the signed-set check alone never saw this, because the
  consistency stage came first.
- A worker answers one unmask request per round, even one repeating the set it signed: the stage moves
  to "done" before the answer is built (README: "a worker answers at most one unmask request per round").
- Consistency signatures count once per signer: the same signature repeated is not ``t`` of them.
- The broker checks every rebuilt mask key against the public key the worker advertised, as it checks
  self-mask seeds against their commitments: a tampered share of a dropped worker's key among exactly
  ``t`` aborts the round, and among more than ``t`` it is outvoted, so the sum is never wrong.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated.crypto import shamir
from federated.crypto.errors import ProtocolViolation
from federated.crypto.params import SecAggParams
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_broker import SecAggBroker
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import ConsistencyCheck, Shares, UnmaskRequest, UnmaskShares

IDS = ("w0", "w1", "w2", "w3")


def _sharing_round() -> tuple[SecAggBroker, dict[str, SecAggWorker], dict[str, Shares]]:
    """Four workers on the complete graph (k = 3, t = 2) up to key sharing; the SHARES each is sent."""
    params = SecAggParams(2, 3, 1.0, 1, 0, len(IDS), 4)
    keys = {w: generate_identity() for w in IDS}
    broker = SecAggBroker(1, IDS, params, {w: public for w, (_, public) in keys.items()})
    workers = {w: SecAggWorker(w, keys[w][0], 1, params) for w in IDS}
    for w in IDS:
        broker.receive(w, workers[w].advertise())
    for w, roster in broker.advance():
        broker.receive(w, workers[w].on_roster(roster))
    return broker, workers, dict(broker.advance())


def _masked_round(dropped: tuple[str, ...] = ()) -> tuple[SecAggBroker, dict[str, SecAggWorker], np.ndarray]:
    """The round of :func:`_sharing_round` past key sharing; all but ``dropped`` sent a masked input.
    Returns the broker, the workers and the exact sum of the inputs sent (mod 2^32)."""
    broker, workers, shares = _sharing_round()
    for w, message in shares.items():
        workers[w].on_shares(message)
    total = np.zeros(4, np.uint32)
    for i, w in enumerate(IDS):
        if w not in dropped:
            x = np.arange(1, 5, dtype=np.uint32) * np.uint32(1000 * (i + 1))
            total += x
            broker.receive(w, workers[w].masked_input(x))
    return broker, workers, total


def _to_unmask(broker: SecAggBroker, workers: dict[str, SecAggWorker]) -> dict[str, UnmaskRequest]:
    """Run the honest consistency stage; the unmask requests the broker sends, by worker."""
    for w, check in broker.advance():
        broker.receive(w, workers[w].on_consistency(check))
    return dict(broker.advance())


def _shift_s_share(answer: UnmaskShares, owner: str) -> UnmaskShares:
    """``answer`` with its share of ``owner``'s mask key moved by one (still a field element)."""
    rows = answer.s_shares.copy()
    row = list(answer.s_owners).index(owner)
    rows[row] = np.frombuffer(
        shamir.to_bytes((shamir.from_bytes(bytes(rows[row])) + 1) % shamir.PRIME), np.uint8
    )
    return UnmaskShares(
        answer.worker_id, answer.round_id, answer.b_owners, answer.b_shares, answer.s_owners, rows
    )


def test_a_worker_does_not_sign_a_survivor_set_that_leaves_it_out() -> None:
    _, workers, _ = _masked_round()
    worker = workers["w0"]
    without_me = ConsistencyCheck(1, ("w1", "w2", "w3"), worker.session)
    with pytest.raises(ProtocolViolation, match="not listed as a survivor"):
        worker.on_consistency(without_me)
    assert worker.signed_survivors is None


def test_a_worker_answers_one_unmask_request_even_for_the_set_it_signed() -> None:
    broker, workers, _ = _masked_round(dropped=("w3",))
    request = _to_unmask(broker, workers)["w0"]
    assert request.survivors == ("w0", "w1", "w2") and request.dropped == ("w3",)
    answer = workers["w0"].on_unmask(request)
    assert set(answer.b_owners) == {"w1", "w2"} and answer.s_owners == ("w3",)
    for again in (
        request,
        UnmaskRequest(1, request.survivors, (), request.session, request.signers, request.signatures),
    ):
        with pytest.raises(ProtocolViolation):
            workers["w0"].on_unmask(again)


def test_a_tampered_mask_key_share_among_exactly_t_aborts_the_round() -> None:
    # w3 dropped before masking, so the broker rebuilds its mask key from the survivors' shares; w2
    # withholds its share of it, which leaves exactly t = 2, and w1 shifts its share.
    broker, workers, _ = _masked_round(dropped=("w3",))
    for w, request in _to_unmask(broker, workers).items():
        answer = workers[w].on_unmask(request)
        if w == "w2":
            answer = UnmaskShares(w, 1, answer.b_owners, answer.b_shares, (), answer.s_shares[:0])
        broker.receive(w, _shift_s_share(answer, "w3") if w == "w1" else answer)
    broker.advance()
    assert broker.stage == "aborted" and broker.result is None
    assert "mask key of 'w3'" in broker.error and "tampered" in broker.error


def test_a_tampered_mask_key_share_among_more_than_t_is_outvoted() -> None:
    broker, workers, total = _masked_round(dropped=("w3",))
    for w, request in _to_unmask(broker, workers).items():
        answer = workers[w].on_unmask(request)
        broker.receive(w, _shift_s_share(answer, "w3") if w == "w0" else answer)
    broker.advance()
    assert broker.stage == "done" and broker.result is not None
    assert broker.result.survivors == ("w0", "w1", "w2")
    np.testing.assert_array_equal(broker.result.total, total)


def test_one_consistency_signature_repeated_does_not_count_as_t() -> None:
    # t = 2 signatures over the set are needed; w1's signature twice is one signer, not two.
    broker, workers, _ = _masked_round()
    request = _to_unmask(broker, workers)["w0"]
    row = list(request.signers).index("w1")
    repeated = UnmaskRequest(
        1,
        request.survivors,
        request.dropped,
        request.session,
        ("w1", "w1"),
        np.stack([request.signatures[row], request.signatures[row]]),
    )
    with pytest.raises(ProtocolViolation, match="distinct"):
        workers["w0"].on_unmask(repeated)
    assert workers["w0"].on_unmask(request).worker_id == "w0"  # the honest request is still answered


def test_shares_from_a_sender_outside_the_roster_are_refused() -> None:
    _, workers, shares = _sharing_round()
    real = shares["w0"]
    stranger = Shares(1, ("w9", *real.senders[1:]), real.ciphertexts)
    with pytest.raises(ProtocolViolation, match="non-neighbours"):
        workers["w0"].on_shares(stranger)
    assert workers["w0"].stage == "shares"  # nothing taken: the real shares are still accepted
    workers["w0"].on_shares(real)

"""A broker that shows different workers different rosters breaks the round, it does not split it.

README: "Showing different workers different rosters breaks the round". Every worker derives the session
id from the roster it verified (:func:`federated.crypto.params.session_id`), and the session salts every
share key and pairwise mask seed and is checked in the unmask request. So two workers shown rosters that
differ in one entry hold different sessions: they cannot read each other's shares, their pairwise masks
no longer cancel, and neither signs a survivor set or answers an unmask request made for the other's
session.

The cheating broker here controls worker ``m`` (its identity key), so it can sign two different key
adverts for ``m``; it keeps one real :class:`SecAggBroker` per view and shows each honest worker a roster
that verifies.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated.crypto.errors import DecryptionError, ProtocolViolation
from federated.crypto.masks import mask_seed
from federated.crypto.params import SecAggParams, session_id
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_broker import SecAggBroker
from federated.crypto.secagg_worker import SecAggWorker
from federated.protocol import ConsistencyCheck, Shares, UnmaskRequest

ROUND = 5
PARAMS = SecAggParams(threshold=2, degree=3, clip=1.0, weight_cap=1, frac_bits=0, n_max=4, vector_length=4)


def _split_view() -> tuple[dict[str, SecAggWorker], dict[str, np.ndarray]]:
    """Honest a, b, c; the broker's own m advertises twice (m1, m2). The broker runs one real broker state
    machine per view: a is shown the roster with m1's keys, b and c the one with m2's. Returns the workers
    (m1 and m2 play along honestly in their views) and the encrypted shares each sent, one row per
    neighbour."""
    keys = {w: generate_identity() for w in ("a", "b", "c", "m")}
    identities = {w: pub for w, (_, pub) in keys.items()}
    workers = {w: SecAggWorker(w, keys[w][0], ROUND, PARAMS) for w in ("a", "b", "c")}
    workers["m1"] = SecAggWorker("m", keys["m"][0], ROUND, PARAMS)
    workers["m2"] = SecAggWorker("m", keys["m"][0], ROUND, PARAMS)
    adverts = {w: workers[w].advertise() for w in ("a", "b", "c")}
    rosters = []
    for m in ("m1", "m2"):
        view = SecAggBroker(ROUND, sorted(identities), PARAMS, identities)
        for w, advert in adverts.items():
            view.receive(w, advert)
        view.receive("m", workers[m].advertise())
        rosters.append(dict(view.advance())["a"])
    first, second = rosters
    # The two rosters differ in exactly one entry (m's), and each verifies on its own.
    assert first.ids == second.ids == ("a", "b", "c", "m")
    assert [i for i in range(4) if bytes(first.c_pk[i]) != bytes(second.c_pk[i])] == [3]
    views = {"a": first, "m1": first, "b": second, "c": second, "m2": second}
    shares = {w: workers[w].on_roster(roster).ciphertexts for w, roster in views.items()}
    return workers, shares


def _shares_to(recipient: str, senders: tuple[str, ...], workers: dict[str, SecAggWorker],
               shares: dict[str, np.ndarray]) -> Shares:
    """What the broker routes to ``recipient``: each sender's ciphertext addressed to it."""
    to = workers[recipient].worker_id
    rows = [shares[u][workers[u].neighbours.index(to)] for u in senders]
    return Shares(ROUND, tuple(workers[u].worker_id for u in senders), np.array(rows, np.uint8))


def test_workers_shown_rosters_differing_in_one_entry_hold_different_sessions() -> None:
    w, _ = _split_view()
    assert w["a"].session == w["m1"].session != w["b"].session
    assert w["b"].session == w["c"].session == w["m2"].session  # the same roster: the same session


def test_their_shares_do_not_decrypt_and_their_pairwise_masks_do_not_cancel() -> None:
    w, shares = _split_view()
    a, b, c = w["a"], w["b"], w["c"]
    # Across the split: neither side can open what the other sent it.
    with pytest.raises(DecryptionError):
        b.on_shares(_shares_to("b", ("a", "c"), w, shares))
    with pytest.raises(DecryptionError):
        a.on_shares(_shares_to("a", ("b", "m1"), w, shares))
    # The pairwise mask a adds for b is not the one b subtracts for a: their sum keeps a mask.
    assert mask_seed(a._s_sk, b.s_pk, a.session) != mask_seed(b._s_sk, a.s_pk, b.session)
    # Control: within one view shares open and the masks agree.
    assert mask_seed(b._s_sk, c.s_pk, b.session) == mask_seed(c._s_sk, b.s_pk, c.session)
    c.on_shares(_shares_to("c", ("b", "m2"), w, shares))


def test_a_request_for_the_other_view_is_refused() -> None:
    w, shares = _split_view()
    b = w["b"]
    b.on_shares(_shares_to("b", ("c", "m2"), w, shares))
    b.masked_input(np.zeros(PARAMS.vector_length, np.uint32))
    survivors = ("a", "b", "c", "m")
    with pytest.raises(ProtocolViolation, match="another session"):
        b.on_consistency(ConsistencyCheck(ROUND, survivors, w["a"].session))
    # Refused without signing anything: b still signs for its own session, once.
    signature = b.on_consistency(ConsistencyCheck(ROUND, survivors, b.session))
    assert signature.worker_id == "b"
    with pytest.raises(ProtocolViolation, match="another session"):
        b.on_unmask(UnmaskRequest(ROUND, survivors, (), w["a"].session))


@pytest.mark.parametrize("field", ["ids", "c_pk", "s_pk", "identity", "b_commit", "order"])
def test_every_field_of_every_roster_entry_is_in_the_session_id(field: str) -> None:
    entries = {"ids": ["a", "b", "c"], "c_pk": [bytes([i]) * 32 for i in range(3)],
               "s_pk": [bytes([10 + i]) * 32 for i in range(3)], "identity": [bytes([20 + i]) * 32 for i in range(3)],
               "b_commit": [bytes([30 + i]) * 32 for i in range(3)]}
    base = session_id(ROUND, PARAMS, **entries)
    if field == "order":
        changed = {k: v[::-1] for k, v in entries.items()}
    else:
        changed = {**entries, field: [*entries[field][:2], "d" if field == "ids" else b"\xff" * 32]}
    assert session_id(ROUND, PARAMS, **changed) != base

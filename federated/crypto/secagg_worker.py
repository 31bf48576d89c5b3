"""The worker side of secure aggregation: a state machine with no I/O (DESIGN §5).

Stages, each driven by one broker message::

    advertise()          -> AdvertiseKeys        fresh X25519 pairs c (share encryption) and s (masking) and
                                                 a commitment to a fresh self-mask seed b, signed
    on_roster(R)         -> ShareKeys            verify R, check the graph against our floor, compute the
                                                 session and neighbours, Shamir-share s and b among them
    on_shares(S)         -> None                 decrypt the neighbours' shares (at least t of them)
    masked_input(x)      -> MaskedInput          y = x + PRG(b) + sum_v sign(u,v) PRG(s_uv)  (mod 2^32 or 2^16)
    on_consistency(C)    -> ConsistencySignature sign the survivor set we were told (once)
    on_unmask(Q)         -> UnmaskShares         for exactly that set, with >= t valid signatures over it:
                                                 b-shares of survivors, s-shares of dropped; once

This is the active-adversary variant of Bonawitz et al. 2017 (§4): the worker, not the broker, owns its
safety floor (:class:`~federated.crypto.floor.SafetyFloor`). Each method refuses (raises) anything out of
order or against the rules, and a refused request never reveals a share. All secrets come from the OS
CSPRNG (``os.urandom`` / ``cryptography``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from federated.crypto import shamir
from federated.crypto.errors import DecryptionError, ProtocolViolation, SignatureError
from federated.crypto.fixedpoint import reduce_ring
from federated.crypto.floor import SafetyFloor
from federated.crypto.graph import neighbours
from federated.crypto.masks import mask_seed, share_aad, share_key
from federated.crypto.params import (
    SecAggParams,
    advertise_message,
    b_commitment,
    consistency_message,
    session_id,
    sign_of,
)
from federated.crypto.prg import add_mask
from federated.crypto.primitives import aead_decrypt, aead_encrypt, generate_x25519, sign, verify
from federated.protocol.codes import Stage
from federated.protocol.secagg import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    UnmaskRequest,
    UnmaskShares,
)

__all__ = ["SecAggWorker"]


@functools.lru_cache(maxsize=64)
def _checked_roster(round_id: int, params: SecAggParams, ids: tuple[str, ...], c_pks: tuple[bytes, ...],
                    s_pks: tuple[bytes, ...], idents: tuple[bytes, ...], commits: tuple[bytes, ...],
                    signatures: tuple[bytes, ...]) -> tuple[bytes, dict[str, tuple[str, ...]]]:
    """Verify every entry's signature, then ``(session id, neighbour graph)`` of this roster.

    Remembered: the virtual clients of one simulation process all check the same roster, and all of
    this is a pure function of the public roster. Failures raise and are never cached; the key is the
    exact bytes, so a hit proves the same checks passed before. The graph is shared between callers:
    read it, never change it.
    """
    for wid, c, s, ident, commit, sig in zip(ids, c_pks, s_pks, idents, commits, signatures, strict=True):
        try:
            verify(ident, sig, advertise_message(round_id, wid, c, s, commit))
        except SignatureError as exc:
            raise SignatureError(f"roster entry for {wid!r} is not signed by its identity key") from exc
    session = session_id(round_id, params, ids, c_pks, s_pks, idents, commits)
    return session, neighbours(ids, params.degree, session)


@functools.lru_cache(maxsize=16)
def _checked_signatures(message: bytes, signed: tuple[tuple[str, bytes, bytes], ...]) -> None:
    """Verify each ``(worker id, identity key, signature)`` of ``signed`` over ``message``.

    Remembered as :func:`_checked_roster` is: every virtual client of a simulation process checks the
    same consistency signatures of a round (1,000 of them, for each of 500 clients, took the I/O thread
    half a minute at a cohort of 1,000). Failures raise and are never cached; the key is the exact bytes.
    """
    for wid, ident, sig in signed:
        try:
            verify(ident, sig, message)
        except SignatureError as exc:
            raise SignatureError(f"the consistency signature of {wid!r} does not verify") from exc


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


class SecAggWorker:
    """One worker's part in one secure-aggregation round.

    ``floor`` is this worker's own safety floor (default: at least 2 neighbours, ``2t > k``, unmask only
    over at least ``t`` survivors); the broker's parameters cannot lower it.
    """

    def __init__(self, worker_id: str, identity: Ed25519PrivateKey, round_id: int, params: SecAggParams,
                 floor: SafetyFloor | None = None) -> None:
        params.validate()
        self.worker_id = worker_id
        self.round_id = round_id
        self.params = params
        self.floor = floor or SafetyFloor()
        self._identity = identity
        self._c_sk, self.c_pk = generate_x25519()
        self._s_sk, self.s_pk = generate_x25519()
        self._b = os.urandom(32)
        self.b_commit = b_commitment(round_id, worker_id, self._b)
        self.stage = "advertise"
        self.session = b""
        self.ids: tuple[str, ...] = ()
        self.neighbours: tuple[str, ...] = ()
        self._s_pk_of: dict[str, bytes] = {}
        self._identity_of: dict[str, bytes] = {}
        self._shares_from: dict[str, tuple[int, int]] = {}  # u -> (share of s_u, share of b_u)
        self._share_keys: dict[str, bytes] = {}  # neighbour -> AES-GCM key of our pair
        self.mask_peers: tuple[str, ...] = ()
        self.signed_survivors: tuple[str, ...] | None = None

    def _expect(self, stage: str, round_id: int) -> None:
        if round_id != self.round_id:
            raise ProtocolViolation(f"message for round {round_id}; this session is round {self.round_id}")
        if self.stage != stage:
            raise ProtocolViolation(f"expected stage {stage!r}, this session is at {self.stage!r}")

    def advertise(self) -> AdvertiseKeys:
        """Stage 0: our two public keys and the commitment to our self-mask seed, signed."""
        if self.stage != "advertise":
            raise ProtocolViolation("keys were already advertised")
        self.stage = "roster"
        signature = sign(self._identity, advertise_message(self.round_id, self.worker_id, self.c_pk, self.s_pk,
                                                           self.b_commit))
        return AdvertiseKeys(self.worker_id, self.round_id, self.c_pk, self.s_pk, self.b_commit, signature)

    def on_roster(self, roster: Roster) -> ShareKeys:
        """Stage 1: check the roster, then send encrypted shares of s and b to each neighbour.

        Raises SignatureError if any entry's signature fails, ProtocolViolation if we are missing or
        misrepresented, or our neighbours and the threshold fall below this worker's floor.
        """
        self._expect("roster", roster.round_id)
        ids = roster.ids
        if list(ids) != sorted(ids):
            raise ProtocolViolation("roster ids must be sorted")
        if self.worker_id not in ids:
            raise ProtocolViolation("this worker is not in the roster")
        c_pks = tuple(bytes(r) for r in roster.c_pk)
        s_pks = tuple(bytes(r) for r in roster.s_pk)
        idents = tuple(bytes(r) for r in roster.identity)
        commits = tuple(bytes(r) for r in roster.b_commit)
        me = ids.index(self.worker_id)
        if c_pks[me] != self.c_pk or s_pks[me] != self.s_pk or commits[me] != self.b_commit:
            raise ProtocolViolation("the roster misrepresents this worker's keys")
        if len(set(c_pks)) != len(c_pks) or len(set(s_pks)) != len(s_pks):
            raise ProtocolViolation("the roster repeats a public key")
        self.session, graph = _checked_roster(self.round_id, self.params, tuple(ids), c_pks, s_pks, idents,
                                              commits, tuple(bytes(sig) for sig in roster.signature))
        self.ids = ids
        self._s_pk_of = dict(zip(ids, s_pks))
        self._identity_of = dict(zip(ids, idents))
        self.neighbours = graph[self.worker_id]
        if len(self.neighbours) < self.params.threshold:
            raise ProtocolViolation(f"{len(self.neighbours)} neighbours cannot hold shares with threshold "
                                    f"{self.params.threshold}")
        self.floor.check_graph(self.params.threshold, len(self.neighbours))
        xs = [ids.index(v) + 1 for v in self.neighbours]
        s_shares = shamir.split(_raw_private(self._s_sk), xs, self.params.threshold)
        b_shares = shamir.split(self._b, xs, self.params.threshold)
        c_pk_of = dict(zip(ids, c_pks))
        out = np.empty((len(self.neighbours), CIPHERTEXT_BYTES), dtype=np.uint8)
        for row, (v, s_sh, b_sh) in enumerate(zip(self.neighbours, s_shares, b_shares, strict=True)):
            # The same key decrypts what v sends us (stage 2): derived once, not twice.
            key = self._share_keys[v] = share_key(self._c_sk, c_pk_of[v], self.session)
            blob = aead_encrypt(key, shamir.to_bytes(s_sh) + shamir.to_bytes(b_sh),
                                share_aad(self.session, self.worker_id, v))
            out[row] = np.frombuffer(blob, dtype=np.uint8)
        self.stage = "shares"
        return ShareKeys(self.worker_id, self.round_id, self.neighbours, out)

    def on_shares(self, shares: Shares) -> None:
        """Stage 2: decrypt the shares our neighbours sent us.

        Raises DecryptionError, or ProtocolViolation for shares from non-neighbours or from fewer than
        ``threshold`` neighbours: masking with fewer pairwise masks would let a broker that withheld the
        others unmask our input alone once it has our self-mask seed (|U2| >= t, Bonawitz et al. 2017).
        """
        self._expect("shares", shares.round_id)
        stray = set(shares.senders) - set(self.neighbours)
        if stray:
            raise ProtocolViolation(f"shares from non-neighbours: {sorted(stray)[:3]}")
        if len(shares.senders) < self.params.threshold:
            raise ProtocolViolation(f"shares from {len(shares.senders)} neighbours; this round needs at least "
                                    f"the threshold {self.params.threshold}")
        received: dict[str, tuple[int, int]] = {}
        for u, blob in zip(shares.senders, shares.ciphertexts, strict=True):
            plain = aead_decrypt(self._share_keys[u], bytes(blob), share_aad(self.session, u, self.worker_id))
            if len(plain) != 2 * SHARE_BYTES:
                raise DecryptionError(f"share from {u!r} has the wrong length")
            received[u] = (shamir.from_bytes(plain[:SHARE_BYTES]), shamir.from_bytes(plain[SHARE_BYTES:]))
        self._shares_from = received
        self.mask_peers = tuple(sorted(received))
        self.stage = "masked_input"

    def masked_input(self, encoded: np.ndarray, train_s: float = 0.0, *, in_place: bool = False) -> MaskedInput:
        """Stage 3: mask our fixed-point input with b and with every neighbour that shared keys.

        ``in_place``: mask ``encoded`` itself (a caller that gives the array up saves a copy of the
        whole vector); otherwise it is left unchanged. Raises ValueError for a wrong dtype or length.
        """
        self._expect("masked_input", self.round_id)
        if encoded.dtype != np.uint32 or encoded.shape != (self.params.vector_length,):
            raise ValueError(f"encoded input must be uint32 of length {self.params.vector_length}")
        y = encoded if in_place else encoded.copy()
        add_mask(y, self._b, +1)
        for v in self.mask_peers:
            add_mask(y, mask_seed(self._s_sk, self._s_pk_of[v], self.session), sign_of(self.worker_id, v))
        self.stage = Stage.CONSISTENCY.value
        # Under 16-bit sums only the low halves travel: reduction mod 2^16 commutes with the sum, so the
        # masks still cancel, and the low half of a uniform mask is uniform.
        return MaskedInput(self.worker_id, self.round_id, reduce_ring(y, self.params.ring_bits), train_s)

    def _check_survivors(self, session: bytes, survivors: Sequence[str]) -> None:
        if session != self.session:
            raise ProtocolViolation("the request is for another session")
        if list(survivors) != sorted(set(survivors)):
            raise ProtocolViolation("survivor ids must be sorted and distinct")
        if self.worker_id not in survivors:
            raise ProtocolViolation("this worker is not listed as a survivor")
        unknown = set(survivors) - set(self.ids)
        if unknown:
            raise ProtocolViolation(f"workers not in the roster: {sorted(unknown)[:3]}")
        needed = self.floor.survivors_needed(self.params.threshold)
        if len(survivors) < needed:
            raise ProtocolViolation(f"{len(survivors)} survivors is below the {needed} this worker requires")

    def on_consistency(self, check: ConsistencyCheck) -> ConsistencySignature:
        """Stage 4, answered once: sign the session and the survivor set we were told.

        Raises ProtocolViolation for another session, a set without us, with strangers, or smaller than
        the floor; a second request for the round is refused (we sign one set per round).
        """
        self._expect(Stage.CONSISTENCY.value, check.round_id)
        self._check_survivors(check.session, check.survivors)
        self.signed_survivors = tuple(check.survivors)
        self.stage = "unmask"
        return ConsistencySignature(self.worker_id, self.round_id,
                                    sign(self._identity, consistency_message(self.session, check.survivors)))

    def on_unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 5, answered once: reveal b-shares of survivors and s-shares of dropped neighbours.

        Raises ProtocolViolation (or SignatureError), revealing nothing, if it is for another session, its
        survivors are not the set we signed, the sets overlap, a listed worker was not in the roster, it
        carries fewer than ``threshold`` valid consistency signatures from distinct survivors over that
        set, or this was already answered.
        """
        self._expect("unmask", request.round_id)
        self._check_survivors(request.session, request.survivors)
        if tuple(request.survivors) != self.signed_survivors:
            raise ProtocolViolation("the unmask request's survivors are not the set this worker signed")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise ProtocolViolation("survivor and dropped sets overlap")
        unknown = dropped - set(self.ids)
        if unknown:
            raise ProtocolViolation(f"workers not in the roster: {sorted(unknown)[:3]}")
        self._check_signatures(request)
        self.stage = "done"  # before building the answer: a second request must never be served
        b_owners = tuple(u for u in self.mask_peers if u in survivors)
        s_owners = tuple(u for u in self.mask_peers if u in dropped)
        return UnmaskShares(self.worker_id, self.round_id,
                            b_owners, _share_rows([self._shares_from[u][1] for u in b_owners]),
                            s_owners, _share_rows([self._shares_from[u][0] for u in s_owners]))

    def _check_signatures(self, request: UnmaskRequest) -> None:
        """At least ``threshold`` distinct survivors signed the same set (ours among them or not)."""
        signers = request.signers
        if len(set(signers)) != len(signers) or not set(signers) <= set(request.survivors):
            raise ProtocolViolation("consistency signers must be distinct survivors")
        if len(signers) < self.params.threshold:
            raise ProtocolViolation(f"{len(signers)} consistency signatures; at least the threshold "
                                    f"{self.params.threshold} are needed")
        message = consistency_message(self.session, request.survivors)
        _checked_signatures(message, tuple((wid, self._identity_of[wid], bytes(sig))
                                           for wid, sig in zip(signers, request.signatures, strict=True)))


def _share_rows(values: Sequence[int]) -> np.ndarray:
    out = np.empty((len(values), SHARE_BYTES), dtype=np.uint8)
    for i, value in enumerate(values):
        out[i] = np.frombuffer(shamir.to_bytes(value), dtype=np.uint8)
    return out

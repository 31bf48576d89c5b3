"""The broker side of secure aggregation: a state machine with no I/O (DESIGN §5).

The broker routes keys and encrypted shares, adds up masked inputs as they arrive, and finally asks the
survivors for just enough shares to remove the masks. It only ever holds masked inputs (and keeps only
their running sum), and what it can unmask is the sum over the survivors: each survivor's self-mask
PRG(b_u) hides its input from the broker until it is removed from the *sum*, and the pairwise masks of a
dropped worker are removed only in the sum too.

Stages and what closes them (every answer in, or the caller's deadline via :meth:`advance`)::

    advertise     -> U1 advertised valid signed keys; broadcast ROSTER        (abort if too few)
    share_keys    -> U2 sent shares to exactly their neighbours; route SHARES  (abort if too few)
    masked_input  -> U3 sent a masked input; ask CONSISTENCY_CHECK(U3)         (abort if < threshold)
    consistency   -> U4 signed U3; ask UNMASK_REQUEST(U3, U2 - U3, signatures)  (abort if < threshold)
    unmask        -> rebuild b_u for u in U3 and s_u for u in U2 - U3 from >= threshold shares each,
                     check each rebuilt b_u against its signed commitment and each s_u against its
                     public key, remove the masks, and hold the exact sum over U3 in ``result``

A rebuilt seed that does not match its commitment means a tampered share: when more than ``threshold``
shares arrived, subsets are tried (a bounded number) to find one that matches; otherwise the round aborts.
It never returns a sum whose masks did not verifiably cancel.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federated.crypto import shamir
from federated.crypto.errors import ProtocolViolation, ReconstructionError, SignatureError
from federated.crypto.graph import neighbours
from federated.crypto.masks import mask_seed
from federated.crypto.params import (
    SecAggParams,
    advertise_message,
    b_commitment,
    consistency_message,
    session_id,
    sign_of,
)
from federated.crypto.prg import add_mask
from federated.crypto.primitives import public_bytes, verify, x25519_shared
from federated.protocol.codes import Stage
from federated.protocol.secagg import (
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

__all__ = ["STAGES", "SecAggBroker", "SecAggResult"]

STAGES = tuple(stage.value for stage in Stage)
_Answer = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
_EXPECTS: dict[str, type[_Answer]] = {
    "advertise": AdvertiseKeys, "share_keys": ShareKeys, "masked_input": MaskedInput,
    "consistency": ConsistencySignature, "unmask": UnmaskShares}
#: How many share subsets the broker tries per secret when a rebuilt seed fails its commitment (more
#: than the threshold arrived, one or more tampered): bounded, so a liar costs a known amount of work.
MAX_SUBSETS = 256


@dataclass(frozen=True)
class SecAggResult:
    """The unmasked sum over ``survivors`` (uint32 holding the sum mod 2^ring_bits), and who dropped at
    which stage."""

    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: dict[str, str]
    train_s: dict[str, float]


class SecAggBroker:
    """One round's secure aggregation over ``cohort``; ``identities`` maps worker id -> Ed25519 public key."""

    def __init__(self, round_id: int, cohort: Sequence[str], params: SecAggParams,
                 identities: Mapping[str, bytes]) -> None:
        params.validate()
        missing = [w for w in cohort if w not in identities]
        if missing:
            raise ValueError(f"no identity key for {missing[:3]}")
        self.round_id = round_id
        self.params = params
        self.identities = {w: identities[w] for w in cohort}
        self.stage = "advertise"
        self.pending: set[str] = set(cohort)
        self.dropped: dict[str, str] = {}
        self.error = ""
        self.result: SecAggResult | None = None
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._commits: dict[str, bytes] = {}
        # A throwaway key to try each advertised key against: a low-order point (no usable shared secret)
        # is refused on arrival, not left to make every honest worker refuse the roster.
        self._probe = X25519PrivateKey.generate()
        self._sigs: dict[str, bytes] = {}
        self._shares: dict[str, ShareKeys] = {}
        # Masked inputs are summed on arrival (while the other workers still compute, not on the round's
        # tail), so only their running sum is kept, with each sender's reported compute time (s).
        self._masked: dict[str, float] = {}
        self._sum: np.ndarray | None = None
        self._consistency: dict[str, bytes] = {}  # signer -> its signature over the survivor set
        self._unmask: dict[str, UnmaskShares] = {}
        self.ids: tuple[str, ...] = ()
        self.session = b""
        self.graph: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ inbound

    def receive(self, worker_id: str, msg: Any) -> None:
        """Take one worker's answer for the current stage. Raises ProtocolViolation (or SignatureError)
        for anything out of place; the state is then unchanged."""
        expected = _EXPECTS.get(self.stage)
        if expected is None or not isinstance(msg, expected):
            raise ProtocolViolation(f"{type(msg).__name__} does not belong to stage {self.stage!r}")
        if msg.round_id != self.round_id:
            raise ProtocolViolation(f"message for round {msg.round_id}; this is round {self.round_id}")
        if worker_id not in self.pending:
            raise ProtocolViolation(f"no {self.stage} answer expected from {worker_id!r}")
        getattr(self, f"_on_{self.stage}")(worker_id, msg)
        self.pending.discard(worker_id)

    def _on_advertise(self, wid: str, msg: AdvertiseKeys) -> None:
        verify(self.identities[wid], msg.signature,
               advertise_message(self.round_id, wid, msg.c_pk, msg.s_pk, msg.b_commit))
        if any(msg.c_pk in k or msg.s_pk in k for k in self._keys.values()) or msg.c_pk == msg.s_pk:
            raise ProtocolViolation("advertised keys repeat another worker's keys")
        x25519_shared(self._probe, msg.c_pk)  # ProtocolViolation for a low-order point
        x25519_shared(self._probe, msg.s_pk)
        self._keys[wid] = (msg.c_pk, msg.s_pk)
        self._commits[wid] = msg.b_commit
        self._sigs[wid] = msg.signature

    def _on_share_keys(self, wid: str, msg: ShareKeys) -> None:
        if tuple(msg.recipients) != self.graph[wid]:
            raise ProtocolViolation("shares must go to exactly the sender's neighbours, in order")
        self._shares[wid] = msg

    def _on_masked_input(self, wid: str, msg: MaskedInput) -> None:
        if msg.masked.shape != (self.params.vector_length,) or msg.masked.dtype != self.params.wire_dtype:
            raise ProtocolViolation(f"masked input must be {self.params.vector_length} coordinates of "
                                    f"{self.params.wire_dtype}")
        if self._sum is None:
            self._sum = np.zeros(self.params.vector_length, dtype=np.uint32)
        np.add(self._sum, msg.masked, out=self._sum)  # uint32 arithmetic wraps mod 2^32, as the protocol needs
        self._masked[wid] = msg.train_s

    def _on_consistency(self, wid: str, msg: ConsistencySignature) -> None:
        verify(self.identities[wid], msg.signature, consistency_message(self.session, tuple(sorted(self._masked))))
        self._consistency[wid] = msg.signature

    def _on_unmask(self, wid: str, msg: UnmaskShares) -> None:
        peers = set(self.graph[wid]) & set(self._shares)
        survivors = set(self._masked)
        if set(msg.b_owners) - (peers & survivors) or set(msg.s_owners) - (peers - survivors):
            raise ProtocolViolation("unmask shares for workers this worker does not hold, or of the wrong kind")
        for row in (*msg.b_shares, *msg.s_shares):
            try:
                shamir.from_bytes(bytes(row))
            except ValueError as exc:  # refused on arrival, so the sender's state is unchanged
                raise ProtocolViolation(f"unmask share: {exc}") from None
        self._unmask[wid] = msg

    def drop(self, worker_id: str, reason: str) -> None:
        """``worker_id`` is gone (timeout, reconnect, left): it will not answer this stage."""
        if worker_id in self.pending:
            self.pending.discard(worker_id)
            self.dropped.setdefault(worker_id, f"{reason} at {self.stage}")

    @property
    def ready(self) -> bool:
        """Every pending worker answered or dropped: :meth:`advance` may close the stage."""
        return not self.pending and self.stage in _EXPECTS

    # ------------------------------------------------------------------ stages

    def advance(self) -> list[tuple[str, Any]]:
        """Close the current stage (whoever has not answered is dropped) and start the next one.

        Returns (worker id, message) pairs to send. After the last stage ``stage`` is ``"done"`` with
        ``result`` set, or ``"aborted"`` with ``error`` saying why.
        """
        if self.stage not in _EXPECTS:
            return []
        for wid in sorted(self.pending):
            self.dropped.setdefault(wid, f"no answer at {self.stage}")
        self.pending = set()
        try:
            return getattr(self, f"_close_{self.stage}")()  # type: ignore[no-any-return]
        except (ReconstructionError, ProtocolViolation, SignatureError, ValueError) as exc:
            # ValueError: a share row that is not a field element (shamir.from_bytes).
            return self._abort(str(exc))

    def _abort(self, error: str) -> list[tuple[str, Any]]:
        self.stage = "aborted"
        self.error = error
        return []

    def _too_few(self, have: int, need: int, what: str) -> bool:
        if have < need:
            self._abort(f"{what}: {have} workers, {need} needed")
            return True
        return False

    def _close_advertise(self) -> list[tuple[str, Any]]:
        self.ids = tuple(sorted(self._keys))
        if self._too_few(len(self.ids), self.params.threshold + 1, "too few workers advertised keys"):
            return []
        c_pk = [self._keys[w][0] for w in self.ids]
        s_pk = [self._keys[w][1] for w in self.ids]
        ident = [self.identities[w] for w in self.ids]
        commits = [self._commits[w] for w in self.ids]
        self.session = session_id(self.round_id, self.params, self.ids, c_pk, s_pk, ident, commits)
        self.graph = neighbours(self.ids, self.params.degree, self.session)
        if min(len(v) for v in self.graph.values()) < self.params.threshold:
            return self._abort("the neighbour graph is too small for the threshold")
        roster = Roster(self.round_id, self.ids, _rows(c_pk), _rows(s_pk), _rows(ident),
                        _rows([self._sigs[w] for w in self.ids]), _rows(commits))
        self.stage = "share_keys"
        self.pending = set(self.ids)
        return [(w, roster) for w in self.ids]

    def _close_share_keys(self) -> list[tuple[str, Any]]:
        u2 = set(self._shares)
        if self._too_few(len(u2), self.params.threshold + 1, "too few workers shared keys"):
            return []
        out = []
        for v in sorted(u2):
            senders, rows = [], []
            for u in self.graph[v]:
                if u in u2:
                    msg = self._shares[u]
                    senders.append(u)
                    rows.append(msg.ciphertexts[msg.recipients.index(v)])
            out.append((v, Shares(self.round_id, tuple(senders), np.array(rows, dtype=np.uint8).reshape(
                len(rows), -1) if rows else np.empty((0, self._shares[v].ciphertexts.shape[1]), np.uint8))))
        self.stage = "masked_input"
        self.pending = u2
        return out

    def _close_masked_input(self) -> list[tuple[str, Any]]:
        survivors = tuple(sorted(self._masked))
        if self._too_few(len(survivors), self.params.threshold, "too few masked inputs"):
            return []
        check = ConsistencyCheck(self.round_id, survivors, self.session)
        self.stage = "consistency"
        self.pending = set(survivors)
        return [(w, check) for w in survivors]

    def _close_consistency(self) -> list[tuple[str, Any]]:
        survivors = tuple(sorted(self._masked))
        signers = tuple(sorted(self._consistency))
        if self._too_few(len(signers), self.params.threshold, "too few consistency signatures"):
            return []
        dropped = tuple(sorted(set(self._shares) - set(survivors)))
        request = UnmaskRequest(self.round_id, survivors, dropped, self.session, signers,
                                _rows([self._consistency[w] for w in signers]).reshape(len(signers), 64))
        self.stage = "unmask"
        self.pending = set(signers)
        return [(w, request) for w in signers]

    def _close_unmask(self) -> list[tuple[str, Any]]:
        survivors = sorted(self._masked)
        dropped = sorted(set(self._shares) - set(survivors))
        x_of = {w: i + 1 for i, w in enumerate(self.ids)}
        t = self.params.threshold
        # Collect shares by owner: (holder x, share) from every unmask answer.
        b_points: dict[str, list[tuple[int, int]]] = {u: [] for u in survivors}
        s_points: dict[str, list[tuple[int, int]]] = {u: [] for u in dropped}
        for holder, msg in self._unmask.items():
            for owner, row in zip(msg.b_owners, msg.b_shares, strict=True):
                b_points[owner].append((x_of[holder], shamir.from_bytes(bytes(row))))
            for owner, row in zip(msg.s_owners, msg.s_shares, strict=True):
                s_points[owner].append((x_of[holder], shamir.from_bytes(bytes(row))))
        total = self._sum if self._sum is not None else np.zeros(self.params.vector_length, dtype=np.uint32)
        self._sum = None
        for u in survivors:
            seed = _rebuild(f"self-mask seed of {u!r}", b_points[u], t,
                            functools.partial(_opens_commitment, self.round_id, u, self._commits[u]))
            add_mask(total, seed, -1)
        s_pk_of = {w: self._keys[w][1] for w in self.ids}
        for u in dropped:
            raw = _rebuild(f"mask key of {u!r}", s_points[u], t,
                           functools.partial(_matches_public, public=s_pk_of[u]))
            s_u = X25519PrivateKey.from_private_bytes(raw)
            for v in self.graph[u]:
                if v in self._masked:
                    # u shared keys, so its neighbour v received u's shares and added sign(v, u) *
                    # PRG(s_vu) to its input: take it back out of the sum.
                    add_mask(total, mask_seed(s_u, s_pk_of[v], self.session), -sign_of(v, u))
        if self.params.ring_bits < 32:
            total &= np.uint32((1 << self.params.ring_bits) - 1)  # the sum is only defined mod 2^ring_bits
        self.stage = "done"
        self.result = SecAggResult(total, tuple(survivors), dict(self.dropped),
                                   {w: self._masked[w] for w in survivors})
        return []


def _rebuild(what: str, points: list[tuple[int, int]], t: int, valid: Callable[[bytes], bool]) -> bytes:
    """A secret from its shares, accepted only if ``valid`` (it matches its commitment or public key).

    With more than ``t`` shares, subsets are tried (at most :data:`MAX_SUBSETS`) until one rebuilds a
    secret that checks, so a holder that altered its share cannot shift the sum. Raises
    ReconstructionError if none does (a tampered share among exactly ``t``, or too many liars).
    """
    if len(points) < t:
        raise ReconstructionError(f"{what}: need {t} shares, got {len(points)}")
    for subset in itertools.islice(itertools.combinations(sorted(points), t), MAX_SUBSETS):
        try:
            secret = shamir.reconstruct(list(subset), t, check_extra=0)
        except ReconstructionError:
            continue
        if valid(secret):
            return secret
    raise ReconstructionError(f"{what}: no {t} of the {len(points)} shares rebuild the committed secret "
                              "(a share was tampered with)")


def _opens_commitment(round_id: int, worker_id: str, commitment: bytes, b: bytes) -> bool:
    return b_commitment(round_id, worker_id, b) == commitment


def _matches_public(raw: bytes, public: bytes) -> bool:
    return public_bytes(X25519PrivateKey.from_private_bytes(raw).public_key()) == public


def _rows(values: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), -1).copy()

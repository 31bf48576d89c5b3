"""Typed messages of the secure-aggregation stages (DESIGN §5). The message kind is the stage.

Binary values (public keys, signatures, ciphertexts, Shamir shares, masked vectors) travel as uint8 or
uint32 tensor frames, so a roster of a thousand workers never crowds the 64 KiB JSON header; the header
carries only ids and the round number. Shapes and dtypes are checked exactly here, so the state machines
in :mod:`federated.crypto` only ever see well-formed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from federated.protocol.codec import Envelope, encode
from federated.protocol.errors import MalformedMessage
from federated.protocol.fields import Fields, validate_worker_id
from federated.protocol.kinds import Kind
from federated.protocol.limits import Limits

__all__ = [
    "CIPHERTEXT_BYTES",
    "COMMIT_BYTES",
    "SHARE_BYTES",
    "AdvertiseKeys",
    "ConsistencyCheck",
    "ConsistencySignature",
    "MaskedInput",
    "Roster",
    "ShareKeys",
    "Shares",
    "UnmaskRequest",
    "UnmaskShares",
]

_SESSION = re.compile(r"[0-9a-f]{64}")

#: A Shamir share: one element of GF(2^521 - 1), big-endian.
SHARE_BYTES = 66
#: A commitment to a worker's self-mask seed: SHA-256 (see :func:`federated.crypto.params.b_commitment`).
COMMIT_BYTES = 32
#: AES-256-GCM of two shares: 12-byte nonce + 2 * 66 + 16-byte tag.
CIPHERTEXT_BYTES = 12 + 2 * SHARE_BYTES + 16


def _blob(env: Envelope, name: str, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
    arr = env.tensors.get(name)
    if arr is None:
        raise MalformedMessage(f"{env.kind.value}: missing tensor {name!r}")
    if arr.dtype != np.dtype(dtype) or arr.shape != shape:
        raise MalformedMessage(f"{env.kind.value}: tensor {name!r} must be {np.dtype(dtype).name} of shape "
                               f"{shape}, got {arr.dtype.name} {arr.shape}")
    return arr


def _ids(f: Fields, key: str) -> tuple[str, ...]:
    ids = f.str_list(key)
    for wid in ids:
        validate_worker_id(wid)
    if len(set(ids)) != len(ids):
        raise MalformedMessage(f"{f.kind.value}: field {key!r} repeats an id")
    return ids


def _u8(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data


@dataclass(frozen=True)
class AdvertiseKeys:
    """Worker -> broker: this round's two X25519 public keys and a commitment to its self-mask seed,
    signed with the worker's identity key."""

    KIND: ClassVar[Kind] = Kind.ADVERTISE_KEYS
    worker_id: str
    round_id: int
    c_pk: bytes
    s_pk: bytes
    b_commit: bytes
    signature: bytes

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "round_id": self.round_id},
                      {"c_pk": _u8(self.c_pk), "s_pk": _u8(self.s_pk), "b_commit": _u8(self.b_commit),
                       "signature": _u8(self.signature)})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> AdvertiseKeys:
        f = Fields(env.header, env.kind, limits)
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"),
                   _blob(env, "c_pk", (32,)).tobytes(), _blob(env, "s_pk", (32,)).tobytes(),
                   _blob(env, "b_commit", (COMMIT_BYTES,)).tobytes(), _blob(env, "signature", (64,)).tobytes())


@dataclass(frozen=True)
class Roster:
    """Broker -> workers: everyone who advertised keys, with identity keys and signatures to check."""

    KIND: ClassVar[Kind] = Kind.ROSTER
    round_id: int
    ids: tuple[str, ...]
    c_pk: np.ndarray  # (n, 32) uint8
    s_pk: np.ndarray  # (n, 32) uint8
    identity: np.ndarray  # (n, 32) uint8
    signature: np.ndarray  # (n, 64) uint8
    b_commit: np.ndarray  # (n, COMMIT_BYTES) uint8

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"round_id": self.round_id, "ids": list(self.ids)},
                      {"c_pk": self.c_pk, "s_pk": self.s_pk, "identity": self.identity,
                       "signature": self.signature, "b_commit": self.b_commit})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Roster:
        f = Fields(env.header, env.kind, limits)
        ids = _ids(f, "ids")
        n = len(ids)
        return cls(f.integer("round_id"), ids, _blob(env, "c_pk", (n, 32)), _blob(env, "s_pk", (n, 32)),
                   _blob(env, "identity", (n, 32)), _blob(env, "signature", (n, 64)),
                   _blob(env, "b_commit", (n, COMMIT_BYTES)))


@dataclass(frozen=True)
class ShareKeys:
    """Worker -> broker: encrypted Shamir shares of its mask key and self-mask seed, one per neighbour."""

    KIND: ClassVar[Kind] = Kind.SHARE_KEYS
    worker_id: str
    round_id: int
    recipients: tuple[str, ...]
    ciphertexts: np.ndarray  # (m, CIPHERTEXT_BYTES) uint8

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "round_id": self.round_id,
                                  "recipients": list(self.recipients)}, {"ciphertexts": self.ciphertexts})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> ShareKeys:
        f = Fields(env.header, env.kind, limits)
        recipients = _ids(f, "recipients")
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"), recipients,
                   _blob(env, "ciphertexts", (len(recipients), CIPHERTEXT_BYTES)))


@dataclass(frozen=True)
class Shares:
    """Broker -> worker: the ciphertexts addressed to it, by sender (its neighbours that shared keys)."""

    KIND: ClassVar[Kind] = Kind.SHARES
    round_id: int
    senders: tuple[str, ...]
    ciphertexts: np.ndarray  # (m, CIPHERTEXT_BYTES) uint8

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"round_id": self.round_id, "senders": list(self.senders)},
                      {"ciphertexts": self.ciphertexts})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Shares:
        f = Fields(env.header, env.kind, limits)
        senders = _ids(f, "senders")
        return cls(f.integer("round_id"), senders, _blob(env, "ciphertexts", (len(senders), CIPHERTEXT_BYTES)))


@dataclass(frozen=True)
class MaskedInput:
    """Worker -> broker: its encoded input plus all its masks (uint32 mod 2^32, or uint16 mod 2^16 for
    16-bit sums), and its compute time. Which of the two a round expects is checked by the broker's
    state machine."""

    KIND: ClassVar[Kind] = Kind.MASKED_INPUT
    worker_id: str
    round_id: int
    masked: np.ndarray  # (length,) uint32 or uint16
    train_s: float

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "round_id": self.round_id,
                                  "train_s": self.train_s}, {"masked": self.masked})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> MaskedInput:
        f = Fields(env.header, env.kind, limits)
        masked = env.tensors.get("masked")
        if masked is None or masked.dtype not in (np.uint32, np.uint16) or masked.ndim != 1:
            raise MalformedMessage("MASKED_INPUT: tensor 'masked' must be a uint32 or uint16 vector")
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"), masked,
                   f.number("train_s", 0.0, 86400.0))


@dataclass(frozen=True)
class ConsistencyCheck:
    """Broker -> survivors: the survivor set (who sent a masked input) of the session, to sign. A worker
    signs one set per round, so a broker cannot show different workers different sets and still collect
    enough signatures for both (the ConsistencyCheck round of Bonawitz et al. 2017, §4)."""

    KIND: ClassVar[Kind] = Kind.CONSISTENCY_CHECK
    round_id: int
    survivors: tuple[str, ...]
    session: bytes

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"round_id": self.round_id, "survivors": list(self.survivors),
                                  "session": self.session.hex()})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> ConsistencyCheck:
        f = Fields(env.header, env.kind, limits)
        session = f.text("session", _SESSION)
        return cls(f.integer("round_id"), _ids(f, "survivors"), bytes.fromhex(session))


@dataclass(frozen=True)
class ConsistencySignature:
    """Survivor -> broker: its Ed25519 signature over the session and the survivor set it was told."""

    KIND: ClassVar[Kind] = Kind.CONSISTENCY_SIGNATURE
    worker_id: str
    round_id: int
    signature: bytes

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "round_id": self.round_id},
                      {"signature": _u8(self.signature)})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> ConsistencySignature:
        f = Fields(env.header, env.kind, limits)
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"), _blob(env, "signature", (64,)).tobytes())


@dataclass(frozen=True)
class UnmaskRequest:
    """Broker -> survivors: who survived (reveal their self-mask shares) and who dropped (reveal their
    mask-key shares), for the session (32-byte id) the worker computed, with the consistency signatures
    over the survivor set (``signers[i]`` signed ``signatures[i]``). A worker refuses a request whose two
    sets overlap, whose session is not its own, whose survivors are not the set it signed, or that carries
    fewer valid signatures than the threshold."""

    KIND: ClassVar[Kind] = Kind.UNMASK_REQUEST
    round_id: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    session: bytes = b""
    signers: tuple[str, ...] = ()
    signatures: np.ndarray = field(default_factory=lambda: np.empty((0, 64), np.uint8))  # (len(signers), 64)

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"round_id": self.round_id, "survivors": list(self.survivors),
                                  "dropped": list(self.dropped), "session": self.session.hex(),
                                  "signers": list(self.signers)}, {"signatures": self.signatures})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> UnmaskRequest:
        f = Fields(env.header, env.kind, limits)
        session = f.text("session", _SESSION)
        signers = _ids(f, "signers")
        return cls(f.integer("round_id"), _ids(f, "survivors"), _ids(f, "dropped"), bytes.fromhex(session),
                   signers, _blob(env, "signatures", (len(signers), 64)))


@dataclass(frozen=True)
class UnmaskShares:
    """Survivor -> broker: its shares of survivors' self-mask seeds and of dropped workers' mask keys."""

    KIND: ClassVar[Kind] = Kind.UNMASK_SHARES
    worker_id: str
    round_id: int
    b_owners: tuple[str, ...]
    b_shares: np.ndarray  # (len(b_owners), SHARE_BYTES) uint8
    s_owners: tuple[str, ...]
    s_shares: np.ndarray  # (len(s_owners), SHARE_BYTES) uint8

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "round_id": self.round_id,
                                  "b_owners": list(self.b_owners), "s_owners": list(self.s_owners)},
                      {"b_shares": self.b_shares, "s_shares": self.s_shares})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> UnmaskShares:
        f = Fields(env.header, env.kind, limits)
        b_owners, s_owners = _ids(f, "b_owners"), _ids(f, "s_owners")
        if set(b_owners) & set(s_owners):
            raise MalformedMessage("UNMASK_SHARES: an owner appears in both share lists")
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"),
                   b_owners, _blob(env, "b_shares", (len(b_owners), SHARE_BYTES)),
                   s_owners, _blob(env, "s_shares", (len(s_owners), SHARE_BYTES)))

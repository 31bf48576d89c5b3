"""Thin, typed wrappers over `cryptography` for the primitives secure aggregation needs.

X25519 key agreement, HKDF-SHA256, AES-256-GCM with random nonces, and Ed25519 signatures. Every failure
that a peer can cause is turned into a ``federated.crypto.errors`` exception, so the protocol code catches
one family; misuse by our own code (a wrong-length AEAD key) stays ``ValueError``/``TypeError``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federated.crypto.errors import DecryptionError, ProtocolViolation, SignatureError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "SIGNATURE_BYTES",
    "TAG_BYTES",
    "aead_decrypt",
    "aead_encrypt",
    "generate_identity",
    "generate_x25519",
    "hkdf",
    "public_bytes",
    "sign",
    "verify",
    "x25519_shared",
]

#: Raw X25519 / Ed25519 public keys, X25519 shared secrets and AES-256 keys are all 32 bytes.
KEY_BYTES = 32
#: AES-GCM nonce length. 96 bits is the size GCM is designed for (no GHASH of the IV).
NONCE_BYTES = 12
#: AES-GCM authentication tag length.
TAG_BYTES = 16
#: Ed25519 signature length.
SIGNATURE_BYTES = 64

PublicKeyLike = X25519PrivateKey | X25519PublicKey | Ed25519PrivateKey | Ed25519PublicKey


def generate_x25519() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair: (private key, 32-byte raw public key)."""
    private = X25519PrivateKey.generate()
    return private, public_bytes(private)


def x25519_shared(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret with a peer's raw public key.

    Raises ``ProtocolViolation`` if the peer key is not 32 bytes or is a low-order point (the shared secret
    would be all zeros, so a malicious peer could force a known mask or share key).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        got = len(peer_public) if isinstance(peer_public, (bytes, bytearray)) else type(peer_public).__name__
        raise ProtocolViolation(f"invalid X25519 public key: expected {KEY_BYTES} bytes, got {got}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography refuses an all-zero result (RFC 7748 section 6.1)
        raise ProtocolViolation(f"invalid X25519 public key {peer_public.hex()}: {exc}") from exc


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret``: ``length`` bytes (at most 8160).

    An empty ``salt`` is the same as RFC 5869's "not provided" (HashLen zero bytes), because HMAC pads
    short keys with zeros.
    """
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce (12) | ciphertext | tag (16)``.

    The nonce is fresh from ``os.urandom`` on every call: two workers derive the same key for both
    directions, so a counter nonce would repeat across them. Raises ``ValueError`` if ``key`` is not
    32 bytes.
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a blob from ``aead_encrypt``.

    Raises ``DecryptionError`` if the blob is too short or the tag does not verify (wrong key, wrong AAD,
    tampering); ``ValueError`` if ``key`` is not 32 bytes.
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"ciphertext of {len(blob)} bytes is shorter than nonce + tag "
                              f"({NONCE_BYTES + TAG_BYTES} bytes)")
    try:
        return AESGCM(key).decrypt(bytes(blob[:NONCE_BYTES]), bytes(blob[NONCE_BYTES:]), aad)
    except InvalidTag as exc:
        raise DecryptionError("AES-GCM tag does not verify") from exc


def generate_identity() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh Ed25519 identity: (private key, 32-byte raw public key)."""
    private = Ed25519PrivateKey.generate()
    return private, public_bytes(private)


def sign(private: Ed25519PrivateKey, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``."""
    return private.sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature against a raw 32-byte public key.

    Raises ``SignatureError`` if it does not verify, including for a malformed key or signature length.
    """
    if len(public) != KEY_BYTES:
        raise SignatureError(f"Ed25519 public key must be {KEY_BYTES} bytes, got {len(public)}")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"Ed25519 signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError) as exc:  # ValueError: not a valid curve point encoding
        raise SignatureError("Ed25519 signature does not verify") from exc


def public_bytes(key: PublicKeyLike) -> bytes:
    """The raw 32-byte public key of an X25519 or Ed25519 key (private keys give their public half).

    Raises ``TypeError`` for any other key type.
    """
    if isinstance(key, (X25519PrivateKey, Ed25519PrivateKey)):
        key = key.public_key()
    if not isinstance(key, (X25519PublicKey, Ed25519PublicKey)):
        raise TypeError(f"expected an X25519 or Ed25519 key, got {type(key).__name__}")
    return key.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)

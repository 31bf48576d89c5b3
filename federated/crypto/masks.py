"""Key derivation both sides of secure aggregation agree on: the share-encryption key, its associated
data, and the pairwise mask seed. The worker derives them to mask and to encrypt; the broker derives the
pairwise seeds of a dropped worker from its rebuilt key. One module, so the two can never drift apart.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federated.crypto.primitives import hkdf, x25519_shared

__all__ = ["mask_seed", "share_aad", "share_key"]


def share_key(own: X25519PrivateKey, peer_c_pk: bytes, session: bytes) -> bytes:
    """AES-256-GCM key for shares between two workers (same key both ways; nonces are random)."""
    return hkdf(x25519_shared(own, peer_c_pk), salt=session, info=b"fl-secagg share")


def share_aad(session: bytes, sender: str, recipient: str) -> bytes:
    """Associated data binding a share ciphertext to its session, sender and recipient."""
    return session + b"|" + sender.encode() + b"|" + recipient.encode()


def mask_seed(own_s: X25519PrivateKey, peer_s_pk: bytes, session: bytes) -> bytes:
    """The pairwise mask seed s_uv (32 bytes); symmetric in u and v."""
    return hkdf(x25519_shared(own_s, peer_s_pk), salt=session, info=b"fl-secagg mask")

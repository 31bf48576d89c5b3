"""Errors raised by the secure-aggregation cryptography.

The tree (built-in bases in brackets, so callers can catch what they already know)::

    CryptoError                      a security outcome: something did not verify or does not add up
     ├── SignatureError              an Ed25519 signature does not verify (or key/signature malformed)
     ├── DecryptionError             an AES-GCM tag fails, or the ciphertext is too short to hold one
     ├── ProtocolViolation           a request that breaks the protocol's rules: overlapping survivor and
     │                               dropped sets, too few survivors, wrong session, invalid X25519 key
     ├── ReconstructionError         fewer than t Shamir shares, duplicate holders, or inconsistent shares
     └── KeyFileError                (in :mod:`federated.keys.format`) a key file is missing, malformed,
                                     inconsistent or unsafe

    ParameterError [ValueError]      secure-aggregation parameters that cannot work (e.g. a sum that could
                                     wrap mod 2^32); the message names each parameter and its value

Misuse of an API (wrong type, wrong key length passed by our own code) raises ``TypeError`` /
``ValueError`` as usual. Each ``CryptoError`` carries a short machine-readable ``code`` that the broker can
echo in an ERROR reply, like ``federated.protocol.errors``.
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DecryptionError",
    "ParameterError",
    "ProtocolViolation",
    "ReconstructionError",
    "SignatureError",
]


class CryptoError(Exception):
    """Base of every security outcome raised on purpose by ``federated.crypto``."""

    code = "crypto"


class SignatureError(CryptoError):
    """A signature does not verify, or the public key or signature has the wrong length."""

    code = "bad_signature"


class DecryptionError(CryptoError):
    """Authenticated decryption failed: bad tag, wrong key or AAD, or a truncated ciphertext."""

    code = "decryption"


class ProtocolViolation(CryptoError):
    """A peer asked for something the protocol forbids (e.g. both shares of one worker's secrets)."""

    code = "protocol_violation"


class ReconstructionError(CryptoError):
    """A Shamir secret cannot be rebuilt: too few shares, duplicate x, or shares that do not agree."""

    code = "reconstruction"


class ParameterError(ValueError):
    """Secure-aggregation parameters that cannot work; the message names the parameters and values."""

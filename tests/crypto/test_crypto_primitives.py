"""Primitive wrappers: AEAD round trip and failures, X25519 key checks, signature failures."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federated.crypto.errors import CryptoError, DecryptionError, ProtocolViolation, SignatureError
from federated.crypto.primitives import (
    aead_decrypt,
    aead_encrypt,
    generate_identity,
    generate_x25519,
    public_bytes,
    sign,
    verify,
    x25519_shared,
)


def test_x25519_pairs_agree() -> None:
    a, a_public = generate_x25519()
    b, b_public = generate_x25519()
    assert len(a_public) == 32 and a_public != b_public
    assert x25519_shared(a, b_public) == x25519_shared(b, a_public)


@pytest.mark.parametrize("peer", [b"", bytes(31), bytes(33)])
def test_x25519_wrong_length_is_a_protocol_violation(peer: bytes) -> None:
    private, _ = generate_x25519()
    with pytest.raises(ProtocolViolation, match="invalid X25519 public key"):
        x25519_shared(private, peer)


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")])
def test_x25519_low_order_point_is_a_protocol_violation(point: bytes) -> None:
    # u = 0 and u = 1 have small order: the shared secret would be all zeros whatever our key.
    private, _ = generate_x25519()
    with pytest.raises(ProtocolViolation, match="invalid X25519 public key"):
        x25519_shared(private, point)


def test_aead_round_trip_and_fresh_nonces() -> None:
    key = bytes(range(32))
    first = aead_encrypt(key, b"share", b"aad")
    second = aead_encrypt(key, b"share", b"aad")
    assert first != second  # random nonce each time
    assert len(first) == 12 + len(b"share") + 16
    assert aead_decrypt(key, first, b"aad") == b"share"
    assert aead_decrypt(key, aead_encrypt(key, b"", b""), b"") == b""


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda blob, key, aad: (blob, key, aad + b"x"), id="wrong-aad"),
    pytest.param(lambda blob, key, aad: (blob, bytes(32), aad), id="wrong-key"),
    pytest.param(lambda blob, key, aad: (blob[:-1] + bytes([blob[-1] ^ 1]), key, aad), id="bad-tag"),
    pytest.param(lambda blob, key, aad: (blob[:12] + bytes([blob[12] ^ 1]) + blob[13:], key, aad),
                 id="bad-ciphertext"),
    pytest.param(lambda blob, key, aad: (blob[:27], key, aad), id="too-short"),
    pytest.param(lambda blob, key, aad: (b"", key, aad), id="empty"),
])
def test_aead_failures_raise_decryption_error(mutate) -> None:  # type: ignore[no-untyped-def]
    key, aad = bytes(range(1, 33)), b"session|u|v"
    blob, key2, aad2 = mutate(aead_encrypt(key, b"secret share", aad), key, aad)
    with pytest.raises(DecryptionError):
        aead_decrypt(key2, blob, aad2)


def test_aead_rejects_a_short_key() -> None:
    with pytest.raises(ValueError):
        aead_encrypt(bytes(16), b"x", b"")
    with pytest.raises(ValueError):
        aead_decrypt(bytes(16), bytes(40), b"")


def test_signatures() -> None:
    private, public = generate_identity()
    signature = sign(private, b"roster")
    assert len(signature) == 64
    verify(public, signature, b"roster")
    _, other = generate_identity()
    for args in [(public, signature, b"roster!"),                       # wrong message
                 (other, signature, b"roster"),                          # wrong key
                 (public, signature[:-1] + bytes([signature[-1] ^ 1]), b"roster"),
                 (public[:31], signature, b"roster"),                    # malformed key
                 (public, signature[:63], b"roster"),                    # malformed signature
                 (b"\xff" * 32, signature, b"roster")]:                  # not a curve point
        with pytest.raises(SignatureError):
            verify(*args)


def test_errors_are_crypto_errors_with_codes() -> None:
    for cls in (SignatureError, DecryptionError, ProtocolViolation):
        assert issubclass(cls, CryptoError) and cls.code != CryptoError.code


def test_public_bytes_of_private_and_public_keys() -> None:
    private = X25519PrivateKey.generate()
    assert public_bytes(private) == public_bytes(private.public_key())
    with pytest.raises(TypeError):
        public_bytes(b"not a key")  # type: ignore[arg-type]

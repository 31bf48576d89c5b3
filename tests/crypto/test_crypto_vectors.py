"""Published test vectors: RFC 7748 (X25519), RFC 5869 (HKDF-SHA256), NIST SP 800-38A F.5.5
(CTR-AES256.Encrypt) and RFC 8032 (Ed25519), plus the byte order of the mask PRG."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federated.crypto import prg
from federated.crypto.primitives import hkdf, public_bytes, sign, verify, x25519_shared

h = bytes.fromhex

# RFC 7748 section 5.2: (scalar, input u-coordinate, output u-coordinate).
RFC7748_SCALAR_MULT = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]


@pytest.mark.parametrize(("scalar", "u_in", "u_out"), RFC7748_SCALAR_MULT)
def test_x25519_rfc7748_scalar_mult(scalar: str, u_in: str, u_out: str) -> None:
    private = X25519PrivateKey.from_private_bytes(h(scalar))
    assert x25519_shared(private, h(u_in)) == h(u_out)


def test_x25519_rfc7748_diffie_hellman() -> None:
    # RFC 7748 section 6.1.
    alice = X25519PrivateKey.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = X25519PrivateKey.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    alice_public = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_public = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert public_bytes(alice) == alice_public
    assert public_bytes(bob) == bob_public
    assert x25519_shared(alice, bob_public) == shared
    assert x25519_shared(bob, alice_public) == shared


# RFC 5869 appendix A, test cases 1-3 (SHA-256): (IKM, salt, info, L, OKM).
RFC5869 = [
    pytest.param(h("0b" * 22), h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"), 42,
                 "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
                 id="case1-basic"),
    pytest.param(bytes(range(0x50)), bytes(range(0x60, 0xB0)), bytes(range(0xB0, 0x100)), 82,
                 "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
                 "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
                 "cc30c58179ec3e87c14c01d5c1f3434f1d87",
                 id="case2-long"),
    # Case 3 has a zero-length salt and info: our empty salt must behave as "not provided".
    pytest.param(h("0b" * 22), b"", b"", 42,
                 "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
                 id="case3-empty-salt-info"),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int, okm: str) -> None:
    assert hkdf(ikm, salt=salt, info=info, length=length) == h(okm)


def test_aes256_ctr_nist_sp800_38a_f55() -> None:
    # NIST SP 800-38A F.5.5 CTR-AES256.Encrypt: four blocks from initial counter f0f1...feff.
    key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = h("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
                  "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
    ciphertext = h("601ec313775789a5b7a7f504bbf3d228" "f443e3ca4d62b59aca84e990cacaf5c5"
                   "2b0930daa23de94ce87017ba2d84988d" "dfc9c58db67aada613c2dd08457941a6")
    assert prg._aes_ctr(key, counter, plaintext) == ciphertext


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 1000, (1 << 18) + 7])
def test_keystream_is_little_endian_aes256_ctr_of_zeros(length: int) -> None:
    seed = bytes(range(32))
    raw = prg._aes_ctr(seed, bytes(16), bytes(4 * length))
    expected = [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(min(length, 64))]
    words = prg.keystream_u32(seed, length)
    assert words.dtype == np.uint32 and words.shape == (length,)
    assert words[:64].tolist() == expected
    assert words.tobytes() == raw  # the host here is little-endian; pins the full stream too


def test_keystream_first_block_known_answer() -> None:
    # AES-256 of the zero block under the zero key is dc95c078 a2408989 ad48a214 92842087; with a zero
    # IV that block is the first keystream block, read as four little-endian words.
    assert prg.keystream_u32(bytes(32), 4).tolist() == [0x78C095DC, 0x898940A2, 0x14A248AD, 0x87208492]


def test_ed25519_rfc8032_test1() -> None:
    private = Ed25519PrivateKey.from_private_bytes(
        h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    public = h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = h("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                  "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert public_bytes(private) == public
    assert sign(private, b"") == signature  # Ed25519 is deterministic
    verify(public, signature, b"")

"""Cryptography for secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020).

One module per concept, all pure functions:

- ``primitives``: X25519, HKDF-SHA256, AES-256-GCM, Ed25519 (wrappers over `cryptography`)
- ``prg``: the mask PRG, AES-256-CTR read as little-endian uint32
- ``shamir``: t-of-n sharing of 32-byte secrets over GF(2^521 - 1)
- ``fixedpoint``: updates into Z_2^32 and back, and the no-wrap check
- ``graph``: the k-regular neighbour graph
- ``errors``: the exception tree
- ``keyfiles``: key files on disk (broker and worker CURVE keys, worker identities) and the enrolment

Names that only make sense with their module (``shamir.split``, ``shamir.to_bytes``,
``fixedpoint.encode``, ``fixedpoint.decode_sum``) are reached through the module, not re-exported flat.
"""

from __future__ import annotations

from federated.crypto import fixedpoint, graph, keyfiles, prg, primitives, shamir
from federated.crypto.errors import (
    CryptoError,
    DecryptionError,
    ParameterError,
    ProtocolViolation,
    ReconstructionError,
    SignatureError,
)
from federated.crypto.fixedpoint import check_no_wrap, clip_l2, max_abs, max_frac_bits
from federated.crypto.graph import default_degree, default_threshold, degree_for, neighbours
from federated.crypto.keyfiles import BrokerKeys, EnrolledWorker, Enrolment, KeyFileError, WorkerKeys
from federated.crypto.params import SecAggParams
from federated.crypto.prg import add_mask, keystream_u32, uniform01
from federated.crypto.primitives import (
    aead_decrypt,
    aead_encrypt,
    generate_identity,
    generate_x25519,
    hkdf,
    public_bytes,
    sign,
    verify,
    x25519_shared,
)
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult
from federated.crypto.secagg_worker import SecAggWorker
from federated.crypto.shamir import PRIME, SHARE_BYTES, lagrange_at_zero

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "BrokerKeys",
    "CryptoError",
    "DecryptionError",
    "EnrolledWorker",
    "Enrolment",
    "KeyFileError",
    "ParameterError",
    "ProtocolViolation",
    "ReconstructionError",
    "SecAggBroker",
    "SecAggParams",
    "SecAggResult",
    "SecAggWorker",
    "SignatureError",
    "WorkerKeys",
    "add_mask",
    "aead_decrypt",
    "aead_encrypt",
    "check_no_wrap",
    "clip_l2",
    "default_degree",
    "default_threshold",
    "degree_for",
    "fixedpoint",
    "generate_identity",
    "generate_x25519",
    "graph",
    "hkdf",
    "keyfiles",
    "keystream_u32",
    "lagrange_at_zero",
    "max_abs",
    "max_frac_bits",
    "neighbours",
    "prg",
    "primitives",
    "public_bytes",
    "shamir",
    "sign",
    "uniform01",
    "verify",
    "x25519_shared",
]

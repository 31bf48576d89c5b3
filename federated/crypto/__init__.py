"""Cryptography for secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020).

Two tiers, like pyca/cryptography's recipes over its ``hazmat`` layer.

The top of the package is what a broker or a worker runs a secure round with: the state machines
(:class:`SecAggWorker`, :class:`SecAggBroker` and its :class:`SecAggResult`), the round's parameters
(:class:`SecAggParams`), the worker's own limits (:class:`SafetyFloor`) and the errors.

Below them, one module per concept, all pure functions, reached as modules
(``from federated.crypto import shamir``; ``shamir.split``, ``fixedpoint.encode``), never re-exported flat:

- ``primitives``: X25519, HKDF-SHA256, AES-256-GCM, Ed25519 (wrappers over `cryptography`)
- ``prg``: the mask PRG, AES-256-CTR read as little-endian uint32
- ``masks``: mask seeds and the share key and AAD, derived the same way on both sides
- ``shamir``: t-of-n sharing of 32-byte secrets over GF(2^521 - 1)
- ``fixedpoint``: updates into Z_2^32 and back, and the no-wrap check
- ``secagg_input``: the layout of one masked input and the split of a decoded sum
- ``graph``: the k-regular neighbour graph
- ``params``: :class:`SecAggParams` and the messages that are signed or committed to
- ``floor``: :class:`SafetyFloor`
- ``errors``: the exception tree

Key files (CURVE keys, worker identities, enrolment) are not cryptography of the protocol: they live in
:mod:`federated.keys`, one layer up, which this package never imports.
"""

from __future__ import annotations

from federated.crypto.errors import (
    CryptoError,
    DecryptionError,
    ParameterError,
    ProtocolViolation,
    ReconstructionError,
    SignatureError,
)
from federated.crypto.floor import SafetyFloor
from federated.crypto.params import SecAggParams
from federated.crypto.secagg_broker import SecAggBroker, SecAggResult
from federated.crypto.secagg_worker import SecAggWorker

__all__ = [
    "CryptoError",
    "DecryptionError",
    "ParameterError",
    "ProtocolViolation",
    "ReconstructionError",
    "SafetyFloor",
    "SecAggBroker",
    "SecAggParams",
    "SecAggResult",
    "SecAggWorker",
    "SignatureError",
]

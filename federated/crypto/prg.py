"""The mask PRG: the AES-256-CTR keystream of a 32-byte seed, read as little-endian uint32.

``keystream(seed)`` is AES-256-CTR with key ``seed`` and an all-zero 128-bit initial counter block,
encrypting zeros; word ``i`` is bytes ``4i .. 4i+3`` read little-endian. Every worker and the broker must
produce the same words from the same seed, on any platform, so the byte order is fixed here rather than
left to the host. A seed must never be used for two different purposes: callers derive separate seeds with
HKDF (different ``info``), because the keystream of a zero IV is a pure function of the seed.

AES-NI makes this several GB/s; numpy's generators are never used for masks (their seeding folds a key into
far fewer bits than 256, and their output is not a cryptographic PRG).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["SEED_BYTES", "Keystream", "add_mask", "keystream_u32", "uniform01"]

#: Length of a PRG seed (an AES-256 key).
SEED_BYTES = 32

_ZERO_IV = bytes(16)
#: Keystream is produced in pieces of this many bytes: large enough that the per-call overhead of
#: `update_into` is noise, small enough that the scratch buffer stays in cache while numpy adds it.
_CHUNK_BYTES = 1 << 20
#: Read-only zeros to encrypt. Immutable and never resized, so threads can share it without a lock.
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
#: Older cryptography releases require `len(buf) >= len(data) + block_size - 1` in `update_into`, even
#: for CTR; only `len(data)` bytes are written, so the slack costs nothing.
_SLACK = 15
_LE_U32 = np.dtype("<u4")


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CTR of ``data`` under ``key`` with 16-byte initial counter block ``iv`` (for the NIST vectors)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _encryptor(seed: bytes) -> CipherContext:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        got = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {got}")
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_IV)).encryptor()


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be a non-negative integer, got {length!r}")


def keystream_u32(seed: bytes, length: int) -> np.ndarray:
    """The first ``length`` uint32 words of the keystream of ``seed`` (a new array, shape ``(length,)``).

    Raises ``ValueError`` if ``seed`` is not 32 bytes or ``length`` is negative.
    """
    encryptor = _encryptor(seed)
    _check_length(length)
    total = 4 * int(length)
    out = np.empty(total + _SLACK, dtype=np.uint8)
    target = out.data  # a memoryview: writes go straight into the array, no copy
    for start in range(0, total, _CHUNK_BYTES):
        size = min(_CHUNK_BYTES, total - start)
        # CTR continues the counter across calls on one encryptor, so pieces concatenate seamlessly.
        encryptor.update_into(_ZEROS[:size], target[start:start + size + _SLACK])
    words = out[:total].view(_LE_U32)
    return words.astype(np.uint32, copy=False)  # a no-op on little-endian hosts


class Keystream:
    """The keystream of ``seed`` read in order, up to ``block_words`` words at a time: the words of
    ``keystream_u32(seed, n)`` without a whole ``n``-word array (for work done a cache-sized block at a
    time). Raises ``ValueError`` for a bad seed or block size."""

    def __init__(self, seed: bytes, block_words: int) -> None:
        self._encryptor = _encryptor(seed)
        _check_length(block_words)
        if not 0 < block_words <= _CHUNK_BYTES // 4:
            raise ValueError(f"block_words must be in [1, {_CHUNK_BYTES // 4}], got {block_words}")
        self._block_words = int(block_words)
        self._buffer = np.empty(4 * self._block_words + _SLACK, dtype=np.uint8)

    def next(self, count: int) -> np.ndarray:
        """The next ``count`` (<= ``block_words``) uint32 words: a view that the next call overwrites.

        Raises ``ValueError`` if ``count`` is negative or above the block size.
        """
        _check_length(count)
        if count > self._block_words:
            raise ValueError(f"count {count} is above the block size {self._block_words}")
        size = 4 * int(count)
        # CTR continues the counter across calls on one encryptor, so blocks concatenate seamlessly.
        self._encryptor.update_into(_ZEROS[:size], self._buffer.data[:size + _SLACK])
        return self._buffer[:size].view(_LE_U32)


def add_mask(acc: np.ndarray, seed: bytes, sign: int) -> None:
    """In place: ``acc = acc + sign * keystream(seed, len(acc))  (mod 2^32)``.

    ``acc`` must be a writable 1-D uint32 array; ``sign`` is +1 or -1. Works in cache-sized pieces, with a
    per-call scratch buffer (so concurrent calls from several threads are safe). numpy's uint32 add and
    subtract wrap modulo 2^32, which is exactly the group operation of the masks.
    Raises ``ValueError`` for a bad seed, sign, dtype or shape.
    """
    if sign not in (1, -1) or isinstance(sign, bool):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    if not isinstance(acc, np.ndarray) or acc.dtype != np.uint32 or acc.ndim != 1:
        raise ValueError(f"acc must be a 1-D uint32 array, got {getattr(acc, 'dtype', type(acc))} "
                         f"with shape {getattr(acc, 'shape', None)}")
    encryptor = _encryptor(seed)
    op = np.add if sign == 1 else np.subtract
    scratch = np.empty(_CHUNK_BYTES + _SLACK, dtype=np.uint8)
    target = scratch.data
    keystream = scratch[:_CHUNK_BYTES].view(_LE_U32)
    words_per_chunk = _CHUNK_BYTES // 4
    for start in range(0, acc.shape[0], words_per_chunk):
        piece = acc[start:start + words_per_chunk]
        size = 4 * piece.shape[0]
        encryptor.update_into(_ZEROS[:size], target[:size + _SLACK])
        op(piece, keystream[:piece.shape[0]], out=piece)


def uniform01(seed: bytes, length: int) -> np.ndarray:
    """``length`` float64 values in [0, 1) from the keystream: word / 2^32, one 32-bit word per value.

    So the values are multiples of 2^-32 (exact in float64); used for stochastic rounding, where this
    resolution biases the rounding by less than 2^-32 of a unit. Raises ``ValueError`` like
    ``keystream_u32``.
    """
    return keystream_u32(seed, length) * (1.0 / 2**32)

"""Stochastic k-bit quantization (QSGD-style), k in {8, 4, 2}.

A vector ``x`` of n coordinates is sent as one float32 scale ``s = max|x|`` and one signed code per
coordinate on the symmetric grid ``{-L, ..., L} * s / L`` with ``L = 2^(k-1) - 1`` levels per sign
(127, 7 and 1). Each ``|x_i| * L / s`` is rounded down or up at random, up with probability equal to
its fractional part, so the decoded vector is unbiased: ``E[decode(encode(x))] = x``.

Error bound: every decoded coordinate lies on one of the two grid points around ``x_i``, so
``|decode - x| <= s / L`` per coordinate (strictly below, up to float32 rounding), and the variance
per coordinate is at most ``(s / L)^2 / 4``.

Why the symmetric grid rather than 2^k levels over [-s, s]: zero is exactly representable, so zero
coordinates (common after sparsification and in residuals) cost no noise; and the codes are plain
signed integers. The price is one unused code per width, which matters only for k = 2, where the grid is
ternary {-s, 0, s} (TernGrad).

Wire layout: k = 8 sends the codes as int8; k = 4 and k = 2 add ``L`` to make them unsigned and pack 2
or 4 of them per uint8 byte, first coordinate in the low bits, so 4-bit codes really cost half a byte.
Payload bytes are ``ceil(n * k / 8) + 4`` (the 4 being the float32 scale, which travels in ``meta``).

Under secure aggregation per-worker scales differ, so these payloads are not summed directly: there,
``q8`` becomes 16-bit fixed-point sums on a grid shared by every worker (:mod:`federated.compression.secure`).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from federated.compression.codec import (
    SCALAR_BYTES,
    Compressed,
    check_round_seed,
    check_vector,
    expect_meta,
    expect_tensor,
)

__all__ = ["BITS", "Quantizer", "pack_codes", "unpack_codes"]

#: The supported code widths.
BITS = (8, 4, 2)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes (each < 2^bits) into uint8, first code in the low bits; the
    last byte is zero-padded. Raises ``ValueError`` for a width other than 2, 4 or 8."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    per_byte = 8 // bits
    flat = np.asarray(codes, dtype=np.uint8).reshape(-1)
    padded = np.zeros(math.ceil(flat.size / per_byte) * per_byte, dtype=np.uint8)
    padded[:flat.size] = flat
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    # The fields do not overlap, so their sum is their bitwise OR and never exceeds 255.
    packed: np.ndarray = (padded.reshape(-1, per_byte) << shifts).sum(axis=1, dtype=np.uint8)
    return packed


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The first ``n`` unsigned ``bits``-bit codes in ``packed`` (inverse of :func:`pack_codes`), as
    uint8. Raises ``ValueError`` for a bad width or too few bytes."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    per_byte = 8 // bits
    raw = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if raw.size * per_byte < n:
        raise ValueError(f"{raw.size} bytes hold fewer than {n} {bits}-bit codes")
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    mask = np.uint8((1 << bits) - 1)
    return ((raw[:, None] >> shifts) & mask).reshape(-1)[:n]


class Quantizer:
    """Stochastic ``bits``-bit quantization (spec ``"q8"``, ``"q4"``, ``"q2"``); see the module docstring
    for the grid, the error bound and the wire layout.

    The rounding noise comes from ``np.random.default_rng([salt, round_seed])``. ``salt`` should differ
    between workers: with one shared stream every worker would round the same coordinate the same way,
    their errors would be correlated and would not average out in the aggregate. ``None`` draws a salt
    from OS entropy; pass an int (e.g. the worker's index) for reproducible runs. Raises ``ValueError``
    for an unsupported width or a negative salt.
    """

    secure_compatible = True

    def __init__(self, bits: int, salt: int | None = None) -> None:
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        if salt is not None and (not isinstance(salt, int) or salt < 0):
            raise ValueError(f"salt must be a non-negative int or None, got {salt!r}")
        self.bits = bits
        self.levels = 2 ** (bits - 1) - 1
        # 128 bits from the OS, what np.random.SeedSequence() draws as its entropy when given none.
        self.salt: int = secrets.randbits(128) if salt is None else salt
        self.name = f"q{bits}"

    def code_bytes(self, n: int) -> int:
        """Bytes of the codes for ``n`` coordinates (without the 4-byte scale)."""
        return math.ceil(n * self.bits / 8)

    def quantize(self, values: np.ndarray, round_seed: int) -> tuple[np.ndarray, float]:
        """The wire codes (int8 for 8 bits, packed uint8 otherwise) and the scale ``max|values|`` (a
        float32 value as a Python float) of a 1-D float32 array. Raises ``ValueError`` for non-finite
        values or a bad seed."""
        x = check_vector(values)
        rng = np.random.default_rng([self.salt, check_round_seed(round_seed)])
        scale = np.float32(np.max(np.abs(x))) if x.size else np.float32(0.0)
        if scale > 0:
            y = np.abs(x) * (np.float32(self.levels) / scale)
            low = np.floor(y)
            q = low + (rng.random(x.size, dtype=np.float32) < (y - low))
            # float32 rounding can put max|x| * L / s a hair above L; clipping there moves it by an ulp.
            q = np.minimum(q, np.float32(self.levels))
            signed = (np.sign(x) * q).astype(np.int8)
        else:
            signed = np.zeros(x.size, dtype=np.int8)
        if self.bits == 8:
            return signed, float(scale)
        return pack_codes((signed + self.levels).astype(np.uint8), self.bits), float(scale)

    def dequantize(self, codes: object, scale: object, n: int) -> np.ndarray:
        """The float32 vector of ``n`` coordinates that ``codes`` and ``scale`` stand for. Raises
        ``ValueError`` for codes of the wrong dtype, size or range, or a negative or non-finite scale."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or scale < 0:
            raise ValueError(f"scale must be a finite non-negative number, got {scale!r}")
        if self.bits == 8:
            signed = expect_tensor({"codes": codes}, "codes", np.int8, n)
            if n and signed.min() < -self.levels:
                raise ValueError(f"int8 code {int(signed.min())} is outside [-{self.levels}, {self.levels}]")
            q = signed.astype(np.float32)
        else:
            packed = expect_tensor({"codes": codes}, "codes", np.uint8, self.code_bytes(n))
            unsigned = unpack_codes(packed, self.bits, n)
            if n and unsigned.max() > 2 * self.levels:
                raise ValueError(f"{self.bits}-bit code {int(unsigned.max())} is above {2 * self.levels}")
            q = unsigned.astype(np.float32) - np.float32(self.levels)
        return q * (np.float32(scale) / np.float32(self.levels))

    def encode(self, vector: np.ndarray, *, round_seed: int) -> Compressed:
        """Quantize a flat float32 update; ``meta`` carries ``scale``. Raises ``ValueError`` for a bad
        vector or seed."""
        codes, scale = self.quantize(vector, round_seed)
        n = int(np.asarray(vector).size)
        return Compressed({"codes": codes}, {"codec": self.name, "length": n, "scale": scale},
                          int(codes.nbytes) + SCALAR_BYTES)

    def decode(self, c: Compressed, length: int) -> np.ndarray:
        """The float32 update of ``length`` that ``c`` stands for. Raises ``ValueError`` for a payload
        that is not a valid one of this codec for that length."""
        expect_meta(c, self.name, length)
        return self.dequantize(c.tensors.get("codes"), c.meta.get("scale"), length)

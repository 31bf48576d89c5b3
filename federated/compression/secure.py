"""What a compression spec becomes under secure aggregation.

Masked inputs must add up coordinate by coordinate in one ring, so a codec works there only if every
worker sends the same coordinates on the same grid:

- ``randk:F`` (shared-seed random-k): every worker encodes and masks only the round's shared
  coordinates. ``randk:F+ef`` adds error feedback: the residual is the worker's own, so it is
  unaffected by the masks.
- ``q8``, ``randk:F+q8`` and ``randk:F+ef+q8``: the sum lives in Z_2^16 instead of Z_2^32, and each masked coordinate
  travels as its low 16 bits (a ring homomorphism, so the masks still cancel; see
  :mod:`federated.crypto.fixedpoint`). The stochastic rounding of the fixed-point encoding *is* the
  quantizer: unbiased, on a grid shared by all workers (step 2^-frac_bits over [-clip, clip]), which
  must be at least as fine as 8 bits (255 levels over [-clip, clip]); the round parameters check it.
  A worker's weight is 1 (16 bits leave no room for sample counts), so the mean is unweighted.
- ``q4`` and ``q2`` are refused: the sum of n 4-bit codes needs 4 + log2(n) bits, so their masked
  inputs would travel in the same 16-bit words as q8's and save nothing, only add error.
- ``topk`` is refused: each worker keeps different coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

from federated.compression.pipeline import make_codec
from federated.compression.quantize import Quantizer
from federated.compression.sparsify import RandomK

__all__ = ["SECURE_SPECS", "SecurePlan", "secure_plan"]

#: The spec forms allowed under secure aggregation, as quoted in error messages.
SECURE_SPECS = ("none", "randk:F", "randk:F+ef", "q8", "randk:F+q8", "randk:F+ef+q8")


@dataclass(frozen=True)
class SecurePlan:
    """``fraction``: shared random-k fraction (None: every coordinate); ``ring_bits``: 32, or 16 for
    the quantized specs; ``error_feedback``: the worker carries unsent coordinates to later rounds."""

    fraction: float | None
    ring_bits: int
    error_feedback: bool = False


def secure_plan(spec: str) -> SecurePlan:
    """The secure-aggregation form of ``spec``. Raises ``ValueError`` saying why a spec cannot run under
    secure aggregation (top-k, q4, q2) or naming the allowed specs for an unknown one."""
    if spec == "none":
        return SecurePlan(None, 32)
    codec = make_codec(spec)
    quantizer = codec if isinstance(codec, Quantizer) else getattr(codec, "quantizer", None)
    if not isinstance(codec, (Quantizer, RandomK)):
        raise ValueError(  # noqa: TRY004 -- spec is a str with a bad value; the codec is ours, not the caller's
            f"{spec!r} cannot run under secure aggregation: each worker keeps different coordinates, so "
            f"the masked vectors no longer add up coordinate by coordinate; allowed under --secure: "
            f"{', '.join(SECURE_SPECS)}")
    if quantizer is not None and quantizer.bits != 8:
        raise ValueError(
            f"{spec!r} under secure aggregation would save nothing over q8: a sum of n {quantizer.bits}-bit "
            f"codes needs {quantizer.bits} + log2(n) bits, so the masked words are 16 bits either way; "
            f"use q8 (or randk:F+q8)")
    if isinstance(codec, RandomK):
        return SecurePlan(codec.fraction, 16 if quantizer is not None else 32, codec.error_feedback)
    return SecurePlan(None, 16)

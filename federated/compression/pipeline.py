"""Codec specs: :func:`make_codec` builds a codec from a config string; :func:`ratio` measures it.

Specs: ``"none"``; ``"q8"``, ``"q4"``, ``"q2"``; ``"topk:F"``, ``"randk:F"`` with F in (0, 1];
``"randk:F+ef"`` (random-k with error feedback; top-k always has it); and ``"topk:F+qK"``,
``"randk:F+qK"``, ``"randk:F+ef+qK"`` (sparsify, then quantize the kept values to K bits).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np

from federated.compression.codec import Codec, Identity
from federated.compression.quantize import BITS, Quantizer
from federated.compression.sparsify import RandomK, TopK

__all__ = ["SPECS", "make_codec", "ratio"]

#: The allowed spec forms, as quoted in error messages.
SPECS = ("none", "q8", "q4", "q2", "topk:F", "randk:F", "randk:F+ef", "topk:F+q8", "randk:F+q8", "randk:F+ef+q8")

_QUANT = re.compile(r"q(\d+)")
_SPARSE = re.compile(r"(topk|randk):([^+]+)(\+ef)?(?:\+q(\d+))?")


def _bad(spec: str, why: str = "") -> ValueError:
    return ValueError(f"unknown compression spec {spec!r}{why}; allowed: {', '.join(SPECS)} "
                      f"(F a fraction in (0, 1]; +q4 and +q2 work like +q8)")


def _quantizer(spec: str, bits_text: str, salt: int | None) -> Quantizer:
    bits = int(bits_text)
    if bits not in BITS:
        raise _bad(spec, f" ({bits} bits is not one of {BITS})")
    return Quantizer(bits, salt=salt)


def make_codec(spec: str, *, salt: int | None = None) -> Codec:
    """A fresh codec for ``spec`` (see the module docstring). ``salt`` seeds the quantizer's rounding
    noise together with each round seed (see :class:`Quantizer`); give each worker its own. Raises
    ``ValueError`` naming the allowed specs for anything else."""
    if not isinstance(spec, str):
        raise _bad(repr(spec))
    text = spec.strip()
    if text == "none":
        return Identity()
    if m := _QUANT.fullmatch(text):
        return _quantizer(spec, m.group(1), salt)
    if m := _SPARSE.fullmatch(text):
        try:
            fraction = float(m.group(2))
        except ValueError:
            raise _bad(spec, f" ({m.group(2)!r} is not a number)") from None
        if not math.isfinite(fraction) or not 0 < fraction <= 1:
            raise _bad(spec, f" (fraction {m.group(2)} is not in (0, 1])")
        quantizer = _quantizer(spec, m.group(4), salt) if m.group(4) else None
        if m.group(1) == "topk":
            if m.group(3):
                raise _bad(spec, " (top-k always has error feedback; drop +ef)")
            return TopK(fraction, quantizer=quantizer)
        return RandomK(fraction, quantizer=quantizer, error_feedback=bool(m.group(3)))
    raise _bad(spec)


def ratio(codec: Codec, length: int, *, seed: int = 0) -> float:
    """The uplink compression ratio of ``codec`` for ``length`` coordinates: float32 bytes
    (``4 * length``) over the payload bytes, measured on a standard-normal vector drawn from ``seed``.
    Encodes a deep copy, so the codec's error-feedback state is untouched. Raises ``ValueError`` for a
    length below 1."""
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    vector = np.random.default_rng(seed).standard_normal(length).astype(np.float32)
    payload = copy.deepcopy(codec).encode(vector, round_seed=seed)
    return 4 * length / payload.nbytes

"""The update-compression interface: :class:`Compressed` payloads and the :class:`Codec` protocol.

A codec turns one flat float32 update (the sorted-name flattening of
:func:`federated.aggregation.vectors.flatten`) into a :class:`Compressed` payload whose tensors travel as
ordinary tensor frames and whose ``meta`` travels in the JSON header, and back. Codecs may keep
per-worker state (the error-feedback residual of top-k), so each worker owns its own instance.

Decoding runs on the broker over payloads a worker made, so every ``decode`` treats its input as
untrusted: dtypes, sizes, index ranges, code ranges and scales are checked and a bad payload raises
``ValueError``, never an ``IndexError`` or a silently wrong vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from federated.protocol.codec import DTYPES

__all__ = [
    "SCALAR_BYTES",
    "Codec",
    "Compressed",
    "Identity",
    "check_round_seed",
    "check_vector",
    "expect_meta",
    "expect_tensor",
]

# (kind, itemsize) of the dtypes protocol.encode sends without a wire_dtypes override. bfloat16 is left
# out: a uint16 array only travels as bfloat16 with an explicit override, which payloads never carry.
_WIRE_KINDS = {(dt.kind, dt.itemsize) for name, dt in DTYPES.items() if name != "bfloat16"}

#: Bytes counted in :attr:`Compressed.nbytes` for each float32 scalar a codec puts in ``meta``.
SCALAR_BYTES = 4


@dataclass(frozen=True)
class Compressed:
    """One compressed update.

    ``tensors`` hold the payload in wire dtypes only (float32, float16, int8, uint8, int32, uint32,
    int64); ``meta`` is JSON-safe (str keys; finite float, int or str values); ``nbytes`` is the payload
    size in bytes: the tensors' bytes plus 4 per float32 scalar in ``meta`` (a quantization scale), not
    the codec name or length, which are framing. Raises ``TypeError``/``ValueError`` on construction if
    any of that does not hold.
    """

    tensors: dict[str, np.ndarray]
    meta: dict[str, float | int | str]
    nbytes: int

    def __post_init__(self) -> None:
        for name, arr in self.tensors.items():
            if not isinstance(name, str) or not isinstance(arr, np.ndarray):
                raise TypeError(f"tensor {name!r}: expected a str name and a numpy array")
            if (arr.dtype.kind, arr.dtype.itemsize) not in _WIRE_KINDS or arr.dtype.byteorder == ">":
                raise TypeError(f"tensor {name!r} has dtype {arr.dtype}, which is not a wire dtype")
        for key, value in self.meta.items():
            if not isinstance(key, str) or not isinstance(value, (int, float, str)):
                raise TypeError(f"meta {key!r}: keys must be str and values int, float or str")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"meta {key!r} is {value}; the JSON header only carries finite numbers")
        if isinstance(self.nbytes, bool) or not isinstance(self.nbytes, int) or self.nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative int, got {self.nbytes!r}")


@runtime_checkable
class Codec(Protocol):
    """Compresses flat float32 updates. ``secure_compatible`` says whether payloads of different workers
    can still be summed coordinate by coordinate (so secure aggregation's masked sum means something)."""

    name: str
    secure_compatible: bool

    def encode(self, vector: np.ndarray, *, round_seed: int) -> Compressed:
        """Compress a 1-D float32 ``vector``. Raises ``ValueError`` for a bad vector or seed."""
        ...

    def decode(self, c: Compressed, length: int) -> np.ndarray:
        """The float32 vector of ``length`` that ``c`` stands for. Raises ``ValueError`` if ``c`` is
        not a valid payload of this codec for that length."""
        ...


def check_vector(vector: Any) -> np.ndarray:
    """``vector`` as a 1-D float32 array. Raises ``ValueError`` if it is not 1-D, not finite, or too
    long for int32 indices (2^31 - 1 coordinates)."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected a flat (1-D) update, got shape {arr.shape}")
    if arr.size >= 2**31:
        raise ValueError(f"update has {arr.size} coordinates; indices are int32")
    # A NaN would poison the quantization scale and, worse, an error-feedback residual forever.
    if not np.isfinite(arr).all():
        raise ValueError("update contains NaN or Inf")
    return arr


def check_round_seed(round_seed: int) -> int:
    """``round_seed`` if it is a non-negative int (what ``np.random.SeedSequence`` takes); else
    ``ValueError``."""
    if isinstance(round_seed, bool) or not isinstance(round_seed, (int, np.integer)) or round_seed < 0:
        raise ValueError(f"round_seed must be a non-negative int, got {round_seed!r}")
    return int(round_seed)


def expect_meta(c: Compressed, name: str, length: int) -> None:
    """Check that ``c`` was made by codec ``name`` for a vector of ``length``; else ``ValueError``."""
    if c.meta.get("codec") != name:
        raise ValueError(f"payload was made by codec {c.meta.get('codec')!r}, not {name!r}")
    if c.meta.get("length") != length:
        raise ValueError(f"payload is for length {c.meta.get('length')!r}, expected {length}")


def expect_tensor(tensors: Mapping[str, Any], key: str, dtype: Any, size: int) -> np.ndarray:
    """``tensors[key]`` as a flat array, checked for ``dtype`` and ``size``; else ``ValueError``."""
    arr = tensors.get(key)
    if not isinstance(arr, np.ndarray):
        # ValueError, not TypeError: this is a malformed payload from a peer, like every other case here.
        raise ValueError(f"payload tensor {key!r} is missing or not an array")  # noqa: TRY004
    if arr.dtype != np.dtype(dtype) or arr.size != size:
        raise ValueError(f"tensor {key!r} is {arr.size} x {arr.dtype}; expected {size} x {np.dtype(dtype)}")
    return arr.reshape(-1)


class Identity:
    """No compression (spec ``"none"``): the float32 vector itself, 4 bytes a coordinate."""

    name = "none"
    secure_compatible = True

    def encode(self, vector: np.ndarray, *, round_seed: int) -> Compressed:
        """The vector as one float32 tensor. Raises ``ValueError`` for a bad vector or seed."""
        check_round_seed(round_seed)
        arr = check_vector(vector)
        return Compressed({"values": arr}, {"codec": self.name, "length": int(arr.size)}, int(arr.nbytes))

    def decode(self, c: Compressed, length: int) -> np.ndarray:
        """A float32 copy of the sent vector. Raises ``ValueError`` for a payload of another shape."""
        expect_meta(c, self.name, length)
        return np.array(expect_tensor(c.tensors, "values", np.float32, length), dtype=np.float32)

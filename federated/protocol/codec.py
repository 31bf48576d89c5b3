"""Framing: a message is ``[version][kind][header JSON][tensor frame]...``.

The header is a UTF-8 JSON object. Its reserved key ``"tensors"`` lists the tensor frames that follow:
``{"name", "dtype", "shape", "chunks"}`` per tensor, the tensor's bytes being the concatenation of the
next ``chunks`` frames (raw little-endian, C order). Every size is checked against :class:`Limits`
*before* anything is allocated or copied; single-chunk tensors are decoded with ``np.frombuffer`` and
never copied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federated.protocol.errors import (
    BadTensor,
    LimitExceeded,
    MalformedMessage,
    UnknownKind,
    UnsupportedVersion,
)
from federated.protocol.kinds import Kind
from federated.protocol.limits import CHUNK_BYTES, Limits

__all__ = ["DTYPES", "VERSION", "Envelope", "decode", "encode"]

VERSION = b"FL1"

#: The dtype allow-list: wire name -> little-endian numpy dtype. bfloat16 travels as its raw uint16 bits.
DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),  # masked inputs of 16-bit secure sums
    "int32": np.dtype("<i4"),
    "uint32": np.dtype("<u4"),
    "int64": np.dtype("<i8"),
}
_NAME_OF = {(v.kind, v.itemsize): k for k, v in DTYPES.items() if k != "bfloat16"}
_FLOAT_WIRE = {"float32", "float16"}
_BF16_EXPONENT = np.uint16(0x7F80)
_KINDS = {k.value.encode("ascii"): k for k in Kind}
_HEADER_TENSORS = "tensors"


@dataclass(frozen=True)
class Envelope:
    """A decoded message: its kind, header fields (without ``tensors``) and named tensors."""

    kind: Kind
    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _wire_dtype(arr: np.ndarray, override: str | None) -> tuple[str, np.ndarray]:
    # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d arrays into 1-d ones.
    if override is not None:
        if override not in DTYPES:
            raise BadTensor(f"dtype {override!r} is not allowed; allowed: {sorted(DTYPES)}")
        # A cast across kinds would send meaningless values (a float array "as bfloat16" would become
        # integers): bfloat16 travels only as the uint16 bit patterns the caller already made.
        wanted = np.dtype(np.uint16) if override == "bfloat16" else DTYPES[override]
        if arr.dtype.kind != wanted.kind or (override == "bfloat16" and arr.dtype.itemsize != 2):
            raise BadTensor(f"cannot send a {arr.dtype} array as {override}"
                            + (" (pass its uint16 bit patterns)" if override == "bfloat16" else ""))
        return override, np.asarray(arr, dtype=DTYPES[override], order="C")
    name = _NAME_OF.get((arr.dtype.kind, arr.dtype.itemsize))
    if name is None:
        raise BadTensor(f"dtype {arr.dtype} is not allowed; allowed: {sorted(DTYPES)}")
    return name, np.asarray(arr, dtype=DTYPES[name], order="C")


def encode(
    kind: Kind,
    header: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray] | None = None,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    wire_dtypes: Mapping[str, str] | None = None,
) -> list[bytes | memoryview]:
    """Encode a message into frames ready for ``socket.send_multipart(..., copy=False)``.

    ``wire_dtypes`` optionally maps a tensor name to the wire dtype to send it as (e.g. ``"bfloat16"``
    for a uint16 bit pattern). Raises :class:`BadTensor` for a dtype outside the allow-list and
    ``ValueError`` if ``header`` uses the reserved key ``"tensors"`` or is not JSON-serialisable.
    """
    if _HEADER_TENSORS in header:
        raise ValueError(f"header key {_HEADER_TENSORS!r} is reserved")
    descriptors: list[dict[str, Any]] = []
    payload: list[bytes | memoryview] = []
    for name, arr in (tensors or {}).items():
        wire, data = _wire_dtype(np.asarray(arr), (wire_dtypes or {}).get(name))
        raw = data.reshape(-1).view(np.uint8).data  # memoryview(arr); numpy types __buffer__ on 3.12+
        n_chunks = max(1, math.ceil(len(raw) / chunk_bytes))
        descriptors.append({"name": name, "dtype": wire, "shape": list(data.shape), "chunks": n_chunks})
        if n_chunks == 1:
            payload.append(raw)
        else:
            payload.extend(raw[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(n_chunks))
    body = dict(header)
    body[_HEADER_TENSORS] = descriptors
    head = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return [VERSION, kind.value.encode("ascii"), head, *payload]


def _raw(frame: Any) -> memoryview:
    """Bytes view of a frame (bytes or zmq.Frame) without copying."""
    buf = getattr(frame, "buffer", frame)
    try:
        return memoryview(buf).cast("B")
    except TypeError as exc:
        raise MalformedMessage(f"frame is not a byte buffer: {type(frame).__name__}") from exc


def _reject_constant(name: str) -> Any:
    raise MalformedMessage(f"header contains the non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    # json.loads maps literals like 1e999 to inf without consulting parse_constant.
    value = float(text)
    if not math.isfinite(value):
        raise MalformedMessage(f"header number {text[:40]} is out of range")
    return value


def _parse_header(raw: memoryview, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_header_bytes:
        raise LimitExceeded(f"header is {len(raw)} bytes; limit is {limits.max_header_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except MalformedMessage:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"header is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise MalformedMessage("header JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"header must be a JSON object, got {type(obj).__name__}")
    return obj


def _descriptor(d: Any, limits: Limits) -> tuple[str, np.dtype[Any], tuple[int, ...], int, str]:
    if not isinstance(d, dict):
        raise MalformedMessage("tensor descriptor must be an object")
    name, wire, shape, chunks = d.get("name"), d.get("dtype"), d.get("shape"), d.get("chunks")
    if not isinstance(name, str) or not 0 < len(name) <= limits.max_string_length:
        raise MalformedMessage(f"tensor name must be a string of 1..{limits.max_string_length} chars")
    if not isinstance(wire, str) or wire not in DTYPES:
        raise BadTensor(f"tensor {name!r}: dtype {wire!r} is not allowed; allowed: {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > limits.max_tensor_rank:
        raise LimitExceeded(f"tensor {name!r}: shape must be a list of rank <= {limits.max_tensor_rank}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise MalformedMessage(f"tensor {name!r}: shape entries must be non-negative integers")
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise MalformedMessage(f"tensor {name!r}: chunks must be a positive integer")
    elements = 1
    for s in shape:
        elements *= s
        # Check as we go: a shape like [2**40, 2**40] must not build a huge Python int first. Each
        # dimension is bounded too: [0, 2**70] has no elements but numpy cannot build it.
        if elements > limits.max_tensor_elements or s > limits.max_tensor_elements:
            raise LimitExceeded(
                f"tensor {name!r}: {shape} exceeds {limits.max_tensor_elements} elements")
    return name, DTYPES[wire], tuple(shape), chunks, wire


def decode(frames: Sequence[Any], limits: Limits | None = None, *, allow_non_finite: bool = False) -> Envelope:
    """Decode and validate received frames.

    Raises a :class:`~federated.protocol.errors.ProtocolError` subclass for anything malformed; never
    anything else for bad input. Float tensors containing NaN or Inf are rejected unless
    ``allow_non_finite``.
    """
    limits = limits or Limits()
    if len(frames) < 3:
        raise MalformedMessage(f"message has {len(frames)} frames; at least 3 are required")
    if len(frames) > limits.max_frames:
        raise LimitExceeded(f"message has {len(frames)} frames; limit is {limits.max_frames}")
    version = bytes(_raw(frames[0])[:16])
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version!r} is not supported (expected {VERSION!r})")
    kind = _KINDS.get(bytes(_raw(frames[1])[:32]))
    if kind is None:
        raise UnknownKind(f"unknown message kind {bytes(_raw(frames[1])[:32])!r}")
    header = _parse_header(_raw(frames[2]), limits)
    descs = header.pop(_HEADER_TENSORS, [])
    if not isinstance(descs, list):
        raise MalformedMessage("header field 'tensors' must be a list")
    if len(descs) > limits.max_tensors:
        raise LimitExceeded(f"message declares {len(descs)} tensors; limit is {limits.max_tensors}")
    parsed = [_descriptor(d, limits) for d in descs]
    if sum(p[3] for p in parsed) != len(frames) - 3:
        raise MalformedMessage(
            f"header declares {sum(p[3] for p in parsed)} tensor frames but {len(frames) - 3} follow")
    declared = sum(math.prod(p[2]) * p[1].itemsize for p in parsed)
    if declared > limits.max_message_bytes:
        raise LimitExceeded(f"message declares {declared} bytes; limit is {limits.max_message_bytes}")
    tensors: dict[str, np.ndarray] = {}
    index = 3
    for name, dtype, shape, chunks, wire in parsed:
        if name in tensors:
            raise MalformedMessage(f"tensor {name!r} appears twice")
        parts = [_raw(f) for f in frames[index:index + chunks]]
        index += chunks
        expected = math.prod(shape) * dtype.itemsize
        got = sum(len(p) for p in parts)
        if got != expected:
            raise BadTensor(f"tensor {name!r}: {got} bytes do not match shape {list(shape)} of {wire}")
        if any(len(p) > limits.max_chunk_bytes for p in parts):
            raise LimitExceeded(f"tensor {name!r}: a frame exceeds {limits.max_chunk_bytes} bytes")
        buf: Any = parts[0] if chunks == 1 else b"".join(parts)
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        if not allow_non_finite and arr.size and (
                (wire in _FLOAT_WIRE and not np.isfinite(arr).all())
                # bfloat16 travels as bits: all exponent bits set means Inf or NaN.
                or (wire == "bfloat16" and (arr & _BF16_EXPONENT == _BF16_EXPONENT).any())):
            raise BadTensor(f"tensor {name!r} contains NaN or Inf")
        tensors[name] = arr
    return Envelope(kind, header, tensors)

"""Fuzzing the decoder: whatever arrives, ``decode_message`` returns a message or raises ProtocolError.

Anything else (KeyError, OverflowError, numpy's ValueError, MemoryError, RecursionError...) escaping the
decoder would crash or confuse the broker loop, so it is a bug.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated.protocol import (
    VERSION,
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    Limits,
    ProtocolError,
    Task,
    Update,
    Welcome,
    decode_message,
    encode,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_chunk_bytes=256)
KINDS = [k.value.encode() for k in Kind]


def _weights() -> dict[str, np.ndarray]:
    return {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(40, dtype=np.float32),
            "c": np.array(1.5, np.float32), "d": np.arange(4, dtype=np.int8)}


def _valid_messages() -> list[list[bytes]]:
    msgs: list[list[Any]] = [
        Hello("worker-1", 10, ("x",)).to_frames(),
        Welcome("worker-1", 1.0, 5.0).to_frames(),
        Heartbeat("worker-1").to_frames(),
        Error("malformed", "bad", 2).to_frames(),
        Bye("worker-1", "bye").to_frames(),
        Task(2, "train", {"train": {"epochs": 1}}, _weights(), 0, 2, 30.0).to_frames(),
        Update("worker-1", 2, "train", 50, {"loss": 0.1}, _weights()).to_frames(),
        # chunked: "b" is 160 bytes, split in 64-byte frames
        encode(Kind.UPDATE, {"worker_id": "w", "round_id": 1, "stage": "train", "num_samples": 1,
                             "metrics": {}}, _weights(), chunk_bytes=64),
    ]
    return [[bytes(f) for f in m] for m in msgs]


VALID = _valid_messages()

#: Values at the edges of what the decoder's range checks and conversions must survive.
EDGES = [0, 1, -1, 2**31, 2**62, 2**63, 2**64, 2**70, 10**400, -(10**400), 1e308, -1e308, 5e-324, "", "train",
         "w", "float32", "x" * 300, [], {}]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(EDGES)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def check(frames: list[Any], limits: Limits = LIMITS) -> None:
    try:
        msg = decode_message(frames, limits)
    except ProtocolError:
        return
    assert isinstance(msg, (Hello, Welcome, Heartbeat, Task, Update, Error, Bye))


def test_valid_messages_decode() -> None:
    for frames in VALID:
        decode_message(frames, LIMITS)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    check(frames)


@FUZZ
@given(st.sampled_from(KINDS), st.binary(max_size=200), st.lists(st.binary(max_size=32), max_size=5))
def test_arbitrary_header_bytes_after_a_valid_prefix(kind: bytes, header: bytes, rest: list[bytes]) -> None:
    check([VERSION, kind, header, *rest])


@pytest.mark.slow
@FUZZ
@given(st.sampled_from(KINDS), st.dictionaries(st.text(max_size=12), json_values, max_size=8),
       st.lists(st.binary(max_size=32), max_size=5))
def test_arbitrary_json_header(kind: bytes, header: dict[str, Any], rest: list[bytes]) -> None:
    check([VERSION, kind, json.dumps(header).encode(), *rest])


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    frames = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "swap", "insert", "edit_header",
                                   "edit_tensor_desc", "extend"]))
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op == "flip" and frames and frames[i]:
            data = bytearray(frames[i])
            for _ in range(draw(st.integers(1, 4))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
            frames[i] = bytes(data)
        elif op == "truncate" and frames:
            frames[i] = frames[i][:draw(st.integers(0, max(0, len(frames[i]) - 1)))]
        elif op == "extend" and frames:
            frames[i] = frames[i] + draw(st.binary(min_size=1, max_size=16))
        elif op == "drop" and frames:
            del frames[i]
        elif op == "duplicate" and frames:
            frames.insert(i, frames[i])
        elif op == "swap" and len(frames) > 1:
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
        elif op == "insert":
            frames.insert(i, draw(st.binary(max_size=32)))
        elif op in ("edit_header", "edit_tensor_desc") and len(frames) > 2:
            try:
                head = json.loads(frames[2])
            except ValueError:
                continue
            if not isinstance(head, dict):
                continue
            target = head
            if op == "edit_tensor_desc" and isinstance(head.get("tensors"), list) and head["tensors"]:
                target = draw(st.sampled_from(head["tensors"]))
                if not isinstance(target, dict):
                    continue
            keys = sorted(target) + ["name", "dtype", "shape", "chunks", "worker_id", "round_id", "stage",
                                     "num_samples", "metrics", "config", "tensors", "new"]
            key = draw(st.sampled_from(keys))
            if draw(st.booleans()) and key in target:
                del target[key]
            else:
                target[key] = draw(json_values)
            frames[2] = json.dumps(head).encode()
    return frames


@FUZZ
@given(mutated())
def test_mutated_valid_messages(frames: list[bytes]) -> None:
    check(frames)


@FUZZ
@given(mutated())
def test_mutated_valid_messages_with_default_limits(frames: list[bytes]) -> None:
    check(frames, Limits())


dims = st.integers(0, 8) | st.sampled_from([0, 1, 2**31, 2**40, 2**62, 2**63, 2**70, 10**30, -1])


@FUZZ
@given(st.sampled_from(["float32", "float16", "bfloat16", "int8", "uint8", "int32", "uint32", "int64",
                        "float64", "bool"]),
       st.lists(dims, max_size=10), st.integers(-1, 4), st.booleans(),
       st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_tensor_descriptors(dtype: str, shape: list[int], chunks: int, exact: bool,
                                      payload: list[bytes]) -> None:
    itemsize = {"float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int64": 8, "float64": 8}.get(dtype, 4)
    size = itemsize
    for d in shape:
        size *= d
    if exact and 0 <= size <= 256 and chunks >= 1:
        # Frames that match the declared size, so the checks after the size check are reached too.
        payload = [b"\x7f" * size] + [b""] * (chunks - 1)
    head = {"worker_id": "w", "round_id": 1, "stage": "train", "num_samples": 1, "metrics": {},
            "tensors": [{"name": "t", "dtype": dtype, "shape": shape, "chunks": chunks}]}
    check([VERSION, b"UPDATE", json.dumps(head).encode(), *payload])


@st.composite
def edited_headers(draw: st.DrawFn) -> list[bytes]:
    """A valid message whose header fields are each, independently, kept, dropped or replaced."""
    frames = list(draw(st.sampled_from(VALID)))
    head = json.loads(frames[2])
    for key in sorted(head):
        if key == "tensors":
            continue
        choice = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
        if choice == "drop":
            del head[key]
        elif choice == "replace":
            head[key] = draw(json_values)
    if "metrics" in head and draw(st.booleans()):
        head["metrics"] = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3))
    frames[2] = json.dumps(head).encode()
    return frames


@FUZZ
@given(edited_headers())
def test_edited_header_fields(frames: list[bytes]) -> None:
    check(frames)


SHAPE_EDGES = [[0, 2**62], [0, 2**63], [0, 2**70], [2**70, 0], [0, -1], [1] * 100, [2**40], [2**20] * 3]


def test_every_field_with_every_edge_value() -> None:
    """Exhaustive, not random: each header field and each tensor-descriptor field of each valid message,
    replaced by each edge value (random search finds the rare combinations only sometimes)."""
    for frames in VALID:
        head = json.loads(frames[2])
        for key in [*head, "metrics"]:
            for value in [*EDGES, {"m": 10**400}, {"m": -(10**400)}, {"m": 1e308}, {"m": True}]:
                edited = dict(head, **{key: value})
                check([*frames[:2], json.dumps(edited).encode(), *frames[3:]])
        for i, desc in enumerate(head["tensors"]):
            for key in ("name", "dtype", "shape", "chunks"):
                for value in [*EDGES, *SHAPE_EDGES]:
                    tensors = [dict(d) for d in head["tensors"]]
                    tensors[i][key] = value
                    edited = dict(head, tensors=tensors)
                    check([*frames[:2], json.dumps(edited).encode(), *frames[3:]])
            # Zero-sized tensors with absurd dimensions, with frames that match their (zero) size.
            for shape in SHAPE_EDGES:
                tensors = [dict(d) for d in head["tensors"]]
                tensors[i] = dict(desc, shape=shape, chunks=1)
                rest = [*frames[3:3 + sum(d["chunks"] for d in head["tensors"][:i])], b"",
                        *frames[3 + sum(d["chunks"] for d in head["tensors"][:i + 1]):]]
                check([*frames[:2], json.dumps(dict(head, tensors=tensors)).encode(), *rest])

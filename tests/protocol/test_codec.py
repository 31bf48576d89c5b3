"""Tests of the framing and tensor codec (``federated.protocol.codec``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from federated.protocol import (
    CHUNK_BYTES,
    DTYPES,
    VERSION,
    BadTensor,
    Kind,
    LimitExceeded,
    Limits,
    MalformedMessage,
    ProtocolError,
    UnknownKind,
    UnsupportedVersion,
    decode,
    encode,
)

KIB = 1024
SMALL = Limits(max_chunk_bytes=KIB)


def as_bytes(frames: list[Any]) -> list[bytes]:
    """What a receiving socket hands over: one independent bytes object per frame."""
    return [bytes(f) for f in frames]


def frames_with_header(header: dict[str, Any], *tensor_frames: bytes, kind: bytes = b"HELLO") -> list[bytes]:
    """A hand-made message: raw header JSON (including any ``tensors`` list) and raw tensor frames."""
    return [VERSION, kind, json.dumps(header).encode(), *tensor_frames]


def tensor_desc(name: Any = "x", dtype: Any = "float32", shape: Any = (2,),
                chunks: Any = 1) -> dict[str, Any]:
    """A tensor descriptor as the header lists it (tuples become JSON lists)."""
    return {"name": name, "dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "chunks": chunks}


# ---------------------------------------------------------------------------------------- round trips


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)


@pytest.mark.parametrize("dtype", sorted(set(DTYPES) - {"bfloat16"}))
@pytest.mark.parametrize("shape", [(3, 4), (7,), (2, 1, 3), (0,), (0, 5)])
def test_every_allowed_dtype_round_trips(dtype: str, shape: tuple[int, ...]) -> None:
    arr = sample(dtype, shape)
    env = decode(as_bytes(encode(Kind.UPDATE, {"a": 1}, {"t": arr})))
    out = env.tensors["t"]
    assert out.dtype == DTYPES[dtype]
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert env.kind is Kind.UPDATE
    assert env.header == {"a": 1}


def test_bfloat16_travels_as_uint16_bits() -> None:
    # bfloat16 is the upper half of a float32: build the bit patterns with numpy only.
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    frames = encode(Kind.UPDATE, {}, {"w": bits}, wire_dtypes={"w": "bfloat16"})
    assert json.loads(bytes(frames[2]))["tensors"][0]["dtype"] == "bfloat16"
    out = decode(as_bytes(frames)).tensors["w"]
    assert out.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(out, bits)
    restored = (out.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(restored, values)


def test_plain_uint16_travels_as_uint16_not_bfloat16() -> None:
    # uint16 is for 16-bit masked inputs; only an explicit wire dtype makes bit patterns bfloat16.
    arr = np.array([0, 0x7F80, 0xFFFF], np.uint16)
    frames = encode(Kind.UPDATE, {}, {"w": arr})
    assert json.loads(bytes(frames[2]))["tensors"][0]["dtype"] == "uint16"
    np.testing.assert_array_equal(decode(as_bytes(frames)).tensors["w"], arr)


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint64, np.bool_, np.complex64])
def test_encode_rejects_dtypes_outside_the_allow_list(dtype: Any) -> None:
    with pytest.raises(BadTensor, match="allowed"):
        encode(Kind.UPDATE, {}, {"w": np.zeros(3, dtype)})


def test_encode_rejects_unknown_wire_dtype_override() -> None:
    with pytest.raises(BadTensor):
        encode(Kind.UPDATE, {}, {"w": np.zeros(3, np.float32)}, wire_dtypes={"w": "float64"})


def test_big_endian_and_strided_inputs_are_sent_little_endian_and_contiguous() -> None:
    big = np.arange(12, dtype=">f4").reshape(3, 4)
    strided = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    env = decode(as_bytes(encode(Kind.UPDATE, {}, {"b": big, "s": strided, "t": transposed})))
    np.testing.assert_array_equal(env.tensors["b"], big)
    assert env.tensors["b"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(env.tensors["s"], strided)
    np.testing.assert_array_equal(env.tensors["t"], transposed)


def test_zero_dimensional_tensor_keeps_its_shape() -> None:
    scalar = np.array(3.5, dtype=np.float32)
    env = decode(as_bytes(encode(Kind.UPDATE, {}, {"s": scalar})))
    assert env.tensors["s"].shape == ()
    assert float(env.tensors["s"]) == 3.5


def test_many_tensors_keep_their_order_and_names() -> None:
    tensors = {f"layers.{i}.weight": np.full((i + 1,), i, np.float32) for i in range(10)}
    env = decode(as_bytes(encode(Kind.TASK, {}, tensors)))
    assert list(env.tensors) == list(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(env.tensors[name], arr)


def test_header_without_tensors_round_trips_nested_json() -> None:
    header = {"s": "é ü 😀", "n": None, "l": [1, 2.5, "x"], "o": {"a": {"b": [True, False]}}}
    env = decode(as_bytes(encode(Kind.HEARTBEAT, header)))
    assert env.header == header
    assert env.tensors == {}


def test_encode_refuses_the_reserved_header_key() -> None:
    with pytest.raises(ValueError, match="reserved"):
        encode(Kind.HELLO, {"tensors": []})


def test_encode_refuses_non_finite_header_values() -> None:
    with pytest.raises(ValueError):
        encode(Kind.HELLO, {"x": float("nan")})


# ---------------------------------------------------------------------------------------- chunking


def test_default_chunk_size_is_8_mib() -> None:
    assert CHUNK_BYTES == 8 * 1024 * 1024
    assert Limits().max_chunk_bytes == CHUNK_BYTES


@pytest.mark.parametrize("n_floats, n_chunks", [(256, 1), (257, 2), (512, 2), (1000, 4), (1, 1)])
def test_tensors_larger_than_a_chunk_are_split(n_floats: int, n_chunks: int) -> None:
    arr = np.arange(n_floats, dtype=np.float32)
    frames = encode(Kind.UPDATE, {}, {"w": arr}, chunk_bytes=KIB)
    desc = json.loads(bytes(frames[2]))["tensors"][0]
    assert desc["chunks"] == n_chunks
    assert len(frames) == 3 + n_chunks
    assert all(len(f) <= KIB for f in frames[3:])
    assert sum(len(f) for f in frames[3:]) == arr.nbytes
    np.testing.assert_array_equal(decode(as_bytes(frames), SMALL).tensors["w"], arr)


def test_chunked_and_unchunked_tensors_mix() -> None:
    tensors = {"big": np.arange(700, dtype=np.int32), "small": np.arange(3, dtype=np.int8),
               "big2": np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)}
    frames = encode(Kind.UPDATE, {}, tensors, chunk_bytes=KIB)
    assert len(frames) == 3 + 3 + 1 + 3
    env = decode(as_bytes(frames), SMALL)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(env.tensors[name], arr)


def test_a_frame_above_the_chunk_limit_is_refused() -> None:
    frames = encode(Kind.UPDATE, {}, {"w": np.zeros(512, np.float32)}, chunk_bytes=2 * KIB)
    with pytest.raises(LimitExceeded, match="frame exceeds"):
        decode(as_bytes(frames), SMALL)


# ---------------------------------------------------------------------------------------- zero copy


def test_single_chunk_tensors_are_not_copied() -> None:
    arr = np.arange(64, dtype=np.float32)
    frames = [bytearray(f) for f in encode(Kind.UPDATE, {}, {"w": arr})]
    out = decode(frames).tensors["w"]
    assert np.shares_memory(out, np.frombuffer(frames[3], np.uint8))
    frames[3][0:4] = np.float32(42.0).tobytes()
    assert out[0] == 42.0  # a view of the received frame, not a copy


def test_single_chunk_tensor_views_a_bytes_frame() -> None:
    frames = as_bytes(encode(Kind.UPDATE, {}, {"w": np.arange(8, dtype=np.int64)}))
    out = decode(frames).tensors["w"]
    base = out.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and base.obj is frames[3]
    assert not out.flags.writeable  # bytes are immutable; so is the view


def test_encode_does_not_copy_contiguous_little_endian_arrays() -> None:
    arr = np.arange(64, dtype=np.float32)
    frames = encode(Kind.UPDATE, {}, {"w": arr})
    assert np.shares_memory(np.frombuffer(frames[3], np.uint8), arr)


# ---------------------------------------------------------------------------------------- framing errors


def valid_frames() -> list[bytes]:
    return as_bytes(encode(Kind.UPDATE, {"k": "v"}, {"w": np.ones(4, np.float32)}))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_frames(n: int) -> None:
    with pytest.raises(MalformedMessage, match="at least 3"):
        decode(valid_frames()[:n])


@pytest.mark.parametrize("version", [b"FL2", b"", b"FL1 ", b"fl1", b"\xff" * 1000])
def test_wrong_version(version: bytes) -> None:
    frames = valid_frames()
    frames[0] = version
    with pytest.raises(UnsupportedVersion):
        decode(frames)


@pytest.mark.parametrize("kind", [b"NOPE", b"", b"hello", b"HELLO\x00", b"\xff\xfe", b"X" * 10_000])
def test_unknown_kind(kind: bytes) -> None:
    frames = valid_frames()
    frames[1] = kind
    with pytest.raises(UnknownKind):
        decode(frames)


@pytest.mark.parametrize("header", [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": 1} trailing', b"{'a': 1}"])
def test_header_not_json(header: bytes) -> None:
    with pytest.raises(MalformedMessage, match="JSON"):
        decode([VERSION, b"HELLO", header])


@pytest.mark.parametrize("header", [b"[]", b"1", b'"x"', b"null", b"true", b"[{}]"])
def test_header_not_an_object(header: bytes) -> None:
    with pytest.raises(MalformedMessage, match="object"):
        decode([VERSION, b"HELLO", header])


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_constants_in_header_are_refused(constant: str) -> None:
    with pytest.raises(MalformedMessage, match="constant"):
        decode([VERSION, b"HELLO", f'{{"x": {constant}}}'.encode()])


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "[1e400]"])
def test_overflowing_float_literals_in_header_are_refused(literal: str) -> None:
    # json.loads turns 1e999 into inf without calling parse_constant: the same hole as Infinity.
    with pytest.raises(MalformedMessage):
        decode([VERSION, b"HELLO", f'{{"x": {literal}}}'.encode()])


def test_huge_integer_literal_in_header_is_malformed() -> None:
    # Python refuses to parse ints of more than 4300 digits (CVE-2020-10735 guard): a ValueError inside json.
    with pytest.raises(MalformedMessage):
        decode([VERSION, b"HELLO", b'{"x": ' + b"9" * 5000 + b"}"])


def test_oversized_header_is_refused_before_parsing() -> None:
    limit = Limits().max_header_bytes
    header = json.dumps({"pad": "x" * limit}).encode()
    with pytest.raises(LimitExceeded, match="header"):
        decode([VERSION, b"HELLO", header])
    # Exactly at the limit is accepted.
    exact = b'{"p":"' + b"x" * (limit - 8) + b'"}'
    assert len(exact) == limit
    assert decode([VERSION, b"HELLO", exact]).header["p"] == "x" * (limit - 8)


def test_deeply_nested_header_is_malformed_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    # Under the default 64 KiB header limit, it is refused for size;
    with pytest.raises(LimitExceeded):
        decode([VERSION, b"HELLO", deep])
    # with a limit big enough to reach the parser, the recursion is caught.
    with pytest.raises(MalformedMessage):
        decode([VERSION, b"HELLO", deep], Limits(max_header_bytes=1 << 20))
    with pytest.raises(MalformedMessage):
        decode([VERSION, b"HELLO", b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}"])


def test_non_buffer_frames_are_malformed() -> None:
    with pytest.raises(MalformedMessage, match="byte buffer"):
        decode([VERSION, "HELLO", b"{}"])  # type: ignore[list-item]
    with pytest.raises(MalformedMessage):
        decode([VERSION, b"HELLO", 12])  # type: ignore[list-item]


def test_too_many_frames_is_refused_before_looking_at_them() -> None:
    frames = [VERSION, b"HELLO", b"{}", *([b""] * 10)]
    with pytest.raises(LimitExceeded, match="frames"):
        decode(frames, Limits(max_frames=12))


# ---------------------------------------------------------------------------------------- tensor errors


def test_tensors_field_must_be_a_list() -> None:
    with pytest.raises(MalformedMessage, match="list"):
        decode(frames_with_header({"tensors": {"name": "x"}}))


@pytest.mark.parametrize("dtype", ["float64", "bool", "object", "complex64", "<f4", "int16", "", None, 5])
def test_tensor_dtype_not_allowed(dtype: Any) -> None:
    with pytest.raises(BadTensor, match="not allowed"):
        decode(frames_with_header({"tensors": [tensor_desc(dtype=dtype)]}, b"\x00" * 8))


def test_object_dtype_can_never_be_smuggled_in() -> None:
    # np.frombuffer with dtype=object would be a pickle-free but pointer-reading hole.
    assert all(dt.kind in "fiu" for dt in DTYPES.values())


@pytest.mark.parametrize("nbytes", [0, 7, 9, 16])
def test_size_mismatch(nbytes: int) -> None:
    with pytest.raises(BadTensor, match="do not match"):
        decode(frames_with_header({"tensors": [tensor_desc(shape=[2])]}, b"\x00" * nbytes))


def test_size_mismatch_across_chunks() -> None:
    frames = frames_with_header({"tensors": [tensor_desc(shape=[4], chunks=2)]}, b"\x00" * 8, b"\x00" * 4)
    with pytest.raises(BadTensor):
        decode(frames)


def test_declared_2_to_the_40_elements_fails_before_allocating() -> None:
    # 4 TiB of float32: if anything were allocated the test would die of MemoryError, not pass.
    frames = frames_with_header({"tensors": [tensor_desc(shape=[2**40])]}, b"\x00" * 8)
    with pytest.raises(LimitExceeded, match="elements"):
        decode(frames)
    frames = frames_with_header({"tensors": [tensor_desc(shape=[2**20, 2**20])]}, b"\x00" * 8)
    with pytest.raises(LimitExceeded):
        decode(frames)


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**70], [2**63, 0], [0, 10**30, 10**30]])
def test_zero_sized_tensor_with_absurd_dimensions_is_refused(shape: list[int]) -> None:
    # The element count is 0, but numpy cannot make an array with such a dimension.
    frames = frames_with_header({"tensors": [tensor_desc(shape=shape)]}, b"")
    with pytest.raises(LimitExceeded):
        decode(frames)


def test_declared_message_size_over_the_limit() -> None:
    limits = Limits(max_message_bytes=100)
    frames = frames_with_header({"tensors": [tensor_desc("a", shape=[20]), tensor_desc("b", shape=[20])]},
                                b"\x00" * 80, b"\x00" * 80)
    with pytest.raises(LimitExceeded, match="bytes"):
        decode(frames, limits)


def test_rank_limit() -> None:
    with pytest.raises(LimitExceeded, match="rank"):
        decode(frames_with_header({"tensors": [tensor_desc(shape=[1] * 9)]}, b"\x00" * 4))
    env = decode(frames_with_header({"tensors": [tensor_desc(shape=[1] * 8)]}, b"\x00" * 4))
    assert env.tensors["x"].shape == (1,) * 8


def test_too_many_tensors() -> None:
    descs = [tensor_desc(f"t{i}", shape=[0]) for i in range(5)]
    with pytest.raises(LimitExceeded, match="tensors"):
        decode(frames_with_header({"tensors": descs}, *[b""] * 5), Limits(max_tensors=4))


@pytest.mark.parametrize("shape", [[-1], [1.5], ["2"], [True], [None], "2", 2, None])
def test_bad_shape_values(shape: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(frames_with_header({"tensors": [tensor_desc(shape=shape)]}, b"\x00" * 8))


@pytest.mark.parametrize("chunks", [0, -1, True, 1.0, "1", None])
def test_bad_chunk_counts(chunks: Any) -> None:
    with pytest.raises(MalformedMessage, match="chunks"):
        decode(frames_with_header({"tensors": [tensor_desc(chunks=chunks)]}, b"\x00" * 8))


@pytest.mark.parametrize("name", ["", 5, None, "x" * 257])
def test_bad_tensor_names(name: Any) -> None:
    with pytest.raises(MalformedMessage, match="name"):
        decode(frames_with_header({"tensors": [tensor_desc(name=name)]}, b"\x00" * 8))


def test_descriptor_must_be_an_object() -> None:
    with pytest.raises(MalformedMessage, match="descriptor"):
        decode(frames_with_header({"tensors": ["x"]}, b"\x00" * 8))


@pytest.mark.parametrize("extra", [-1, 1, 2])
def test_frame_count_mismatch(extra: int) -> None:
    frames = frames_with_header({"tensors": [tensor_desc(), tensor_desc("y")]}, b"\x00" * 8, b"\x00" * 8)
    frames = frames[:extra] if extra < 0 else frames + [b"\x00" * 8] * extra
    with pytest.raises(MalformedMessage, match="tensor frames"):
        decode(frames)


def test_frames_without_descriptors() -> None:
    with pytest.raises(MalformedMessage, match="0 tensor frames but 1"):
        decode([VERSION, b"HELLO", b"{}", b"\x00" * 4])


def test_duplicate_tensor_name() -> None:
    frames = frames_with_header({"tensors": [tensor_desc(), tensor_desc()]}, b"\x00" * 8, b"\x00" * 8)
    with pytest.raises(MalformedMessage, match="twice"):
        decode(frames)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_tensors_are_refused(dtype: str, bad: float) -> None:
    arr = np.array([1.0, bad, 2.0], dtype=DTYPES[dtype])
    frames = as_bytes(encode(Kind.UPDATE, {}, {"w": arr}))
    with pytest.raises(BadTensor, match="NaN or Inf"):
        decode(frames)
    out = decode(frames, allow_non_finite=True).tensors["w"]
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("bits", [0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81])
def test_non_finite_bfloat16_bit_patterns_are_refused(bits: int) -> None:
    arr = np.array([0x3F80, bits, 0x0000], np.uint16)  # 1.0, Inf/NaN, 0.0
    frames = as_bytes(encode(Kind.UPDATE, {}, {"w": arr}, wire_dtypes={"w": "bfloat16"}))
    with pytest.raises(BadTensor, match="NaN or Inf"):
        decode(frames)
    np.testing.assert_array_equal(decode(frames, allow_non_finite=True).tensors["w"], arr)


def test_largest_finite_bfloat16_is_accepted() -> None:
    arr = np.array([0x7F7F, 0xFF7F, 0x0001, 0x8000], np.uint16)  # +-max, subnormal, -0
    frames = as_bytes(encode(Kind.UPDATE, {}, {"w": arr}, wire_dtypes={"w": "bfloat16"}))
    np.testing.assert_array_equal(decode(frames).tensors["w"], arr)


def test_uint16_values_do_not_count_as_bfloat16_when_sent_as_integers() -> None:
    # Only the bfloat16 wire dtype is checked for Inf/NaN bit patterns; int32 0x7F80 is just a number.
    arr = np.array([0x7F80], np.int32)
    np.testing.assert_array_equal(decode(as_bytes(encode(Kind.UPDATE, {}, {"w": arr}))).tensors["w"], arr)


def test_float_array_sent_as_bfloat16_is_refused() -> None:
    with pytest.raises(BadTensor):
        encode(Kind.UPDATE, {}, {"w": np.array([1.5, 2.5], np.float32)}, wire_dtypes={"w": "bfloat16"})


def test_non_finite_in_a_later_chunk_is_refused() -> None:
    arr = np.zeros(1000, np.float32)
    arr[-1] = np.nan
    frames = as_bytes(encode(Kind.UPDATE, {}, {"w": arr}, chunk_bytes=KIB))
    with pytest.raises(BadTensor):
        decode(frames, SMALL)


def test_integer_tensors_need_no_finiteness_check() -> None:
    arr = np.array([np.iinfo(np.int32).min, -1, 0, np.iinfo(np.int32).max], np.int32)
    np.testing.assert_array_equal(decode(as_bytes(encode(Kind.UPDATE, {}, {"w": arr}))).tensors["w"], arr)


def test_every_error_is_a_value_error_with_a_code() -> None:
    codes = set()
    for exc_type in (MalformedMessage, UnsupportedVersion, UnknownKind, LimitExceeded, BadTensor):
        assert issubclass(exc_type, ProtocolError) and issubclass(exc_type, ValueError)
        codes.add(exc_type.code)
    assert len(codes) == 5


def test_limits_validate() -> None:
    Limits().validate()
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_frames"):
            Limits(max_frames=bad).validate()  # type: ignore[arg-type]
    assert Limits().socket_max_msg_size() > max(Limits().max_chunk_bytes, Limits().max_header_bytes)

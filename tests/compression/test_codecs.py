"""Tests of the update codecs (``federated.compression``): quantization, sparsification, specs, wire."""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np
import pytest

from federated.compression import (
    SPECS,
    Codec,
    Compressed,
    Identity,
    Quantizer,
    RandomK,
    TopK,
    kept_count,
    make_codec,
    pack_codes,
    ratio,
    shared_indices,
    unpack_codes,
)
from federated.protocol import Kind, decode, encode

ALL_SPECS = ["none", "q8", "q4", "q2", "topk:0.125", "randk:0.125", "topk:0.03125+q8", "randk:0.25+q8",
             "topk:0.5+q4", "randk:0.5+q2", "randk:0.25+ef", "randk:0.25+ef+q8"]


def vector(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


# ------------------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantization_is_unbiased(bits: int) -> None:
    x = vector(64)
    q = Quantizer(bits, salt=7)
    seeds = 4000
    mean = np.mean([q.decode(q.encode(x, round_seed=s), x.size) for s in range(seeds)], axis=0)
    step = np.max(np.abs(x)) / q.levels
    # Per coordinate the variance is at most step^2 / 4, so the mean's standard error is at most
    # step / (2 sqrt(seeds)); 5 of those leaves no room for a flaky failure over 64 coordinates.
    assert np.max(np.abs(mean - x)) < 5 * step / (2 * np.sqrt(seeds))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_decode_error_is_within_the_documented_bound(bits: int) -> None:
    q = Quantizer(bits, salt=1)
    for seed in range(20):
        x = vector(1001, seed) * (seed + 1)
        c = q.encode(x, round_seed=seed)
        scale = c.meta["scale"]
        assert isinstance(scale, float) and scale == np.max(np.abs(x))
        err = np.abs(q.decode(c, x.size) - x)
        assert err.max() <= scale / q.levels * (1 + 1e-6)


@pytest.mark.parametrize(("bits", "divisor"), [(8, 4), (4, 8), (2, 16)])
def test_packed_sizes(bits: int, divisor: int) -> None:
    n = 4096
    c = Quantizer(bits, salt=0).encode(vector(n), round_seed=0)
    # float32 bytes / divisor for the codes, plus the 4-byte float32 scale.
    assert c.nbytes == 4 * n // divisor + 4
    assert sum(t.nbytes for t in c.tensors.values()) == 4 * n // divisor
    assert c.tensors["codes"].dtype == (np.int8 if bits == 8 else np.uint8)


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("n", [0, 1, 3, 5, 8, 9])
def test_pack_unpack_round_trip_with_odd_lengths(bits: int, n: int) -> None:
    codes = np.random.default_rng(n).integers(0, 2**bits, n).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, n), codes)


def test_quantization_keeps_zero_and_the_extremes_exact() -> None:
    x = np.array([0.0, 3.0, -3.0, 0.0], dtype=np.float32)
    for bits in (8, 4, 2):
        q = Quantizer(bits, salt=0)
        np.testing.assert_array_equal(q.decode(q.encode(x, round_seed=5), 4), x)
    zeros = np.zeros(10, np.float32)
    np.testing.assert_array_equal(Quantizer(4, salt=0).decode(Quantizer(4, salt=0).encode(
        zeros, round_seed=0), 10), zeros)


def test_quantizer_noise_depends_on_salt_and_round_seed() -> None:
    x = vector(500)
    a, b = Quantizer(2, salt=1), Quantizer(2, salt=2)
    same = a.encode(x, round_seed=3).tensors["codes"]
    np.testing.assert_array_equal(Quantizer(2, salt=1).encode(x, round_seed=3).tensors["codes"], same)
    assert not np.array_equal(b.encode(x, round_seed=3).tensors["codes"], same)
    assert not np.array_equal(a.encode(x, round_seed=4).tensors["codes"], same)


@pytest.mark.parametrize(("bits", "codes"), [(8, np.array([-128, 0], np.int8)),
                                             (4, np.array([0x0F], np.uint8)),
                                             (2, np.array([0x03], np.uint8))])
def test_quantizer_rejects_out_of_range_codes(bits: int, codes: np.ndarray) -> None:
    n = 2 if bits != 2 else 1
    c = Compressed({"codes": codes}, {"codec": f"q{bits}", "length": n, "scale": 1.0}, 0)
    with pytest.raises(ValueError, match="code"):
        Quantizer(bits, salt=0).decode(c, n)


@pytest.mark.parametrize("scale", [-1.0, "1", None, True])
def test_quantizer_rejects_bad_scales(scale: object) -> None:
    meta: dict[str, Any] = {"codec": "q8", "length": 2}
    if scale is not None:
        meta["scale"] = scale
    c = Compressed({"codes": np.zeros(2, np.int8)}, meta, 0)
    with pytest.raises(ValueError, match="scale"):
        Quantizer(8, salt=0).decode(c, 2)


# ----------------------------------------------------------------------------------------- top-k


def test_topk_keeps_the_largest() -> None:
    x = vector(1000)
    codec = TopK(0.05)
    c = codec.encode(x, round_seed=0)
    k = kept_count(1000, 0.05)
    assert k == 50 and c.tensors["indices"].dtype == np.int32 and c.tensors["values"].dtype == np.float32
    expected = np.sort(np.argsort(-np.abs(x))[:k])
    np.testing.assert_array_equal(c.tensors["indices"], expected)
    decoded = codec.decode(c, 1000)
    np.testing.assert_array_equal(decoded[expected], x[expected])
    assert np.count_nonzero(decoded) == k
    assert c.nbytes == 8 * k


def test_topk_residual_carries_over() -> None:
    x = vector(200)
    codec = TopK(0.1)
    first = codec.decode(codec.encode(x, round_seed=0), 200)
    assert codec.residual is not None
    np.testing.assert_allclose(codec.residual, x - first)
    # A zero update next round sends the largest leftovers of the first one.
    second = codec.decode(codec.encode(np.zeros(200, np.float32), round_seed=1), 200)
    np.testing.assert_array_equal(np.flatnonzero(second), np.sort(np.argsort(-np.abs(x - first))[:20]))


def test_randk_residual_carries_over_and_select_matches_encode() -> None:
    x = vector(200)
    codec = make_codec("randk:0.25+ef")
    assert isinstance(codec, RandomK) and codec.error_feedback
    first = codec.decode(codec.encode(x, round_seed=0), 200)
    assert codec.residual is not None
    np.testing.assert_allclose(codec.residual, x - first)
    # Next round, the residual rides along: the sent values are x + residual at the new indices.
    twin = make_codec("randk:0.25+ef")
    assert isinstance(twin, RandomK)
    twin.encode(x, round_seed=0)
    idx, values = twin.select(x, round_seed=1)
    second = codec.decode(codec.encode(x, round_seed=1), 200)
    np.testing.assert_allclose(second[idx], values, rtol=1e-6)
    np.testing.assert_allclose(values, (x + (x - first))[idx], rtol=1e-6)
    np.testing.assert_allclose(codec.residual, twin.residual, rtol=1e-6)
    # Without feedback, nothing is kept.
    plain = RandomK(0.25)
    plain.select(x, round_seed=0)
    assert plain.residual is None
    with pytest.raises(ValueError, match="residual"):
        codec.select(vector(100), round_seed=2)


@pytest.mark.parametrize("spec", ["topk:0.05", "topk:0.05+q8", "topk:0.1+q2", "randk:0.25+ef", "randk:0.25+ef+q8"])
def test_error_feedback_sum_of_sent_tracks_sum_of_inputs(spec: str) -> None:
    codec = make_codec(spec, salt=3)
    total_in = np.zeros(500, np.float64)
    total_sent = np.zeros(500, np.float64)
    for r in range(200):
        x = vector(500, seed=r) + 0.5  # a drift, so the inputs' sum grows
        total_in += x
        total_sent += codec.decode(codec.encode(x, round_seed=r), 500)
    # Error feedback: sum(sent) = sum(inputs) - residual exactly, and the residual stays bounded, so the
    # gap is tiny next to the sums themselves.
    assert isinstance(codec, (TopK, RandomK)) and codec.residual is not None
    np.testing.assert_allclose(total_sent + codec.residual, total_in, atol=1e-2)
    assert np.linalg.norm(total_sent - total_in) < 0.1 * np.linalg.norm(total_in)


def test_topk_rejects_a_changed_length_until_reset() -> None:
    codec = TopK(0.5)
    codec.encode(vector(10), round_seed=0)
    with pytest.raises(ValueError, match="residual"):
        codec.encode(vector(11), round_seed=1)
    codec.reset()
    codec.encode(vector(11), round_seed=1)


@pytest.mark.parametrize("indices", [[-1, 2], [2, 2], [3, 1], [0, 10]])
def test_topk_decode_rejects_bad_indices(indices: list[int]) -> None:
    c = Compressed({"indices": np.array(indices, np.int32), "values": np.ones(2, np.float32)},
                   {"codec": "topk:0.2", "length": 10}, 16)
    with pytest.raises(ValueError, match="indices"):
        TopK(0.2).decode(c, 10)


def test_topk_decode_rejects_more_coordinates_than_agreed() -> None:
    c = Compressed({"indices": np.arange(3, dtype=np.int32), "values": np.ones(3, np.float32)},
                   {"codec": "topk:0.2", "length": 10}, 24)
    with pytest.raises(ValueError, match="expected 2"):
        TopK(0.2).decode(c, 10)


# ---------------------------------------------------------------------------------------- random-k


def test_shared_indices_agree_within_a_round_and_differ_across_rounds() -> None:
    a = RandomK(0.1).encode(vector(1000, 1), round_seed=42)
    b = RandomK(0.1).encode(vector(1000, 2), round_seed=42)
    idx = shared_indices(1000, 0.1, 42)
    assert idx.dtype == np.int32 and idx.size == 100 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.flatnonzero(RandomK(0.1).decode(a, 1000)), idx)
    np.testing.assert_array_equal(np.flatnonzero(RandomK(0.1).decode(b, 1000)), idx)
    np.testing.assert_array_equal(idx, np.sort(np.random.default_rng(42).permutation(1000)[:100]))
    assert not np.array_equal(idx, shared_indices(1000, 0.1, 43))
    # Only values travel: the indices are implied by the seed.
    assert set(a.tensors) == {"values"} and a.nbytes == 400


def test_randk_unbiased_option_rescales() -> None:
    x = vector(100)
    c = RandomK(0.25).encode(x, round_seed=9)
    idx = shared_indices(100, 0.25, 9)
    np.testing.assert_array_equal(RandomK(0.25).decode(c, 100)[idx], x[idx])
    np.testing.assert_allclose(RandomK(0.25, unbiased=True).decode(c, 100)[idx], 4 * x[idx], rtol=1e-6)
    mean = np.mean([RandomK(0.25, unbiased=True).decode(RandomK(0.25).encode(x, round_seed=s), 100)
                    for s in range(4000)], axis=0)
    np.testing.assert_allclose(mean, x, atol=0.25)


def test_randk_sums_line_up_across_workers() -> None:
    # What secure aggregation relies on: the sum of payloads decodes to the sum of the sparsified inputs.
    xs = [vector(300, s) for s in range(4)]
    payloads = [RandomK(0.2).encode(x, round_seed=5) for x in xs]
    summed = Compressed({"values": sum(p.tensors["values"] for p in payloads)}, payloads[0].meta, 0)
    idx = shared_indices(300, 0.2, 5)
    np.testing.assert_allclose(RandomK(0.2).decode(summed, 300)[idx], sum(xs)[idx], rtol=1e-5)


# ----------------------------------------------------------------------------------- specs and flags


def test_secure_compatible_flags() -> None:
    expected = {"none": True, "q8": True, "q4": True, "q2": True, "topk:0.1": False, "randk:0.1": True,
                "topk:0.1+q8": False, "randk:0.1+q8": True}
    for spec, flag in expected.items():
        codec = make_codec(spec)
        assert isinstance(codec, Codec)
        assert codec.secure_compatible is flag, spec
        assert codec.name == spec


@pytest.mark.parametrize("spec", ["", "q16", "q3", "topk", "topk:", "topk:0", "topk:1.5", "topk:nan",
                                  "topk:-0.1", "randk:abc", "topk:0.1+q7", "topk:0.1+", "q8+topk:0.1",
                                  "zip", "topk:0.1+q8+q8"])
def test_make_codec_rejects_unknown_specs_naming_the_allowed_ones(spec: str) -> None:
    with pytest.raises(ValueError, match="allowed: none, q8, q4, q2, topk:F, randk:F") as info:
        make_codec(spec)
    assert all(s in str(info.value) for s in SPECS)


def test_ratios() -> None:
    n = 32768
    assert ratio(Identity(), n) == 1.0
    assert ratio(make_codec("q8"), n) == pytest.approx(4, rel=1e-3)
    assert ratio(make_codec("q4"), n) == pytest.approx(8, rel=1e-3)
    assert ratio(make_codec("q2"), n) == pytest.approx(16, rel=1e-3)
    assert ratio(make_codec("topk:0.125"), n) == pytest.approx(4)
    assert ratio(make_codec("randk:0.125"), n) == pytest.approx(8)
    assert ratio(make_codec("topk:0.03125+q8"), n) == pytest.approx(25.6, rel=1e-3)


def test_ratio_leaves_error_feedback_state_alone() -> None:
    codec = TopK(0.1)
    ratio(codec, 1000)
    assert codec.residual is None


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_codecs_reject_bad_input(spec: str) -> None:
    codec = make_codec(spec, salt=0)
    bad = vector(10)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(bad, round_seed=0)
    with pytest.raises(ValueError, match="1-D"):
        codec.encode(vector(10).reshape(2, 5), round_seed=0)
    with pytest.raises(ValueError, match="round_seed"):
        codec.encode(vector(10), round_seed=-1)
    c = codec.encode(vector(10), round_seed=0)
    with pytest.raises(ValueError, match="length"):
        codec.decode(c, 11)
    other = "q8" if spec != "q8" else "q4"
    with pytest.raises(ValueError, match="codec"):
        make_codec(other).decode(c, 10)


def test_compressed_rejects_non_wire_dtypes_and_unsafe_meta() -> None:
    with pytest.raises(TypeError, match="wire dtype"):
        Compressed({"x": np.zeros(2, np.float64)}, {}, 16)
    with pytest.raises(TypeError, match="wire dtype"):
        Compressed({"x": np.zeros(2, np.int16)}, {}, 4)
    with pytest.raises(ValueError, match="finite"):
        Compressed({}, {"scale": float("inf")}, 0)
    with pytest.raises(TypeError):
        Compressed({}, {"scale": [1.0]}, 0)  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------------ the wire


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_payloads_round_trip_through_the_wire_codec(spec: str, n: int) -> None:
    x = vector(n, seed=n)
    sender, receiver = make_codec(spec, salt=11), make_codec(spec)
    c = sender.encode(x, round_seed=17)
    json.dumps(c.meta, allow_nan=False)
    env = decode([bytes(f) for f in encode(Kind.UPDATE, c.meta, c.tensors)])
    received = Compressed(dict(env.tensors), dict(env.header), c.nbytes)
    np.testing.assert_array_equal(receiver.decode(received, n), sender.decode(c, n))
    out = receiver.decode(received, n)
    assert out.dtype == np.float32 and out.shape == (n,)


def test_empty_vectors() -> None:
    for spec in ALL_SPECS:
        codec = make_codec(spec, salt=0)
        out = codec.decode(codec.encode(np.zeros(0, np.float32), round_seed=0), 0)
        assert out.shape == (0,) and out.dtype == np.float32


def test_public_surface_is_sorted_and_importable() -> None:
    module = importlib.import_module("federated.compression")
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda s: (not s.isupper(), s))
    for symbol in exported:
        assert hasattr(module, symbol)


@pytest.mark.parametrize(("spec", "fraction", "ring_bits", "ef"), [
    ("none", None, 32, False), ("randk:0.25", 0.25, 32, False), ("randk:0.25+ef", 0.25, 32, True),
    ("q8", None, 16, False), ("randk:0.5+q8", 0.5, 16, False), ("randk:0.25+ef+q8", 0.25, 16, True)])
def test_secure_plan_of_each_allowed_spec(spec: str, fraction: float | None, ring_bits: int, ef: bool) -> None:
    from federated.compression import secure_plan

    plan = secure_plan(spec)
    assert (plan.fraction, plan.ring_bits, plan.error_feedback) == (fraction, ring_bits, ef)


@pytest.mark.parametrize(("spec", "why"), [("topk:0.1", "keeps different coordinates"),
                                           ("topk:0.1+q8", "keeps different coordinates"),
                                           ("q4", "save nothing over q8"), ("randk:0.5+q2", "save nothing"),
                                           ("zip", "unknown compression spec")])
def test_secure_plan_refuses_with_the_reason(spec: str, why: str) -> None:
    from federated.compression import secure_plan

    with pytest.raises(ValueError, match=why):
        secure_plan(spec)

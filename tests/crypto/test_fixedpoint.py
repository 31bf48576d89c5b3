"""Fixed-point encoding into Z_2^32: exact weights, bounded error, unbiased rounding, no wrap."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.crypto import fixedpoint, prg
from federated.crypto.errors import ParameterError


def _vector(length: int, scale: float) -> np.ndarray:
    """Test data in [-scale, scale) from the PRG: no numpy generators near the crypto code."""
    return (prg.uniform01(os.urandom(32), length) * 2.0 - 1.0) * scale


def _sum(encodings: list[np.ndarray]) -> np.ndarray:
    return np.sum(np.stack(encodings), axis=0, dtype=np.uint32)  # wraps mod 2^32, as the masks do


def test_round_trip_error_is_below_n_units() -> None:
    # Each encoding is within one unit (2^-f) of weight * clipped update, so a sum of n is within n units.
    clip, frac_bits, n, d = 3.0, 16, 25, 400
    updates = [_vector(d, 1.0) for _ in range(n)]
    weights = [1 + i * 7 for i in range(n)]
    total = _sum([fixedpoint.encode(u, w, clip=clip, frac_bits=frac_bits, seed=os.urandom(32))
                  for u, w in zip(updates, weights, strict=True)])
    data, weight = fixedpoint.decode_sum(total, frac_bits)
    exact = sum(w * fixedpoint.clip_l2(u, clip) for u, w in zip(updates, weights, strict=True))
    assert weight == sum(weights)  # exact
    assert np.max(np.abs(data - exact)) < n * 2.0**-frac_bits


def test_each_coordinate_rounds_to_a_neighbouring_integer() -> None:
    update, weight, frac_bits = _vector(1000, 0.01), 5, 12
    encoded = fixedpoint.encode(update, weight, clip=1.0, frac_bits=frac_bits, seed=os.urandom(32))
    assert encoded.dtype == np.uint32 and encoded.shape == (1001,)
    data, w = fixedpoint.decode_sum(encoded, frac_bits)
    assert w == weight
    scaled = weight * update * 2**frac_bits
    units = data * 2**frac_bits
    assert np.all((units == np.floor(scaled)) | (units == np.floor(scaled) + 1))


@pytest.mark.parametrize(("value", "frac_bits", "weight"), [
    (0.3 / 2**8, 8, 1),               # 0.3 of a unit
    (-(5 + 0.7) / 2**10, 10, 1),      # negative, 0.3 of a unit above an integer
    ((2**13 + 0.25) / 2**8, 8, 1),    # a large scaled value (|v| > 2^21 units is where v + u loses bits)
    (0.01, 6, 3),                     # weight > 1
])
def test_stochastic_rounding_is_unbiased(value: float, frac_bits: int, weight: int) -> None:
    # 200 encodings with independent seeds, 1,000 equal coordinates each: 200,000 roundings. The standard
    # error of the mean is below 0.5 / sqrt(200,000) ~ 0.0011 units; allow 6 of them.
    d, trials = 1000, 200
    update = np.full(d, value)
    clip = float(np.linalg.norm(update)) * 2
    means = []
    for _ in range(trials):
        encoded = fixedpoint.encode(update, weight, clip=clip, frac_bits=frac_bits, seed=os.urandom(32))
        means.append(fixedpoint.decode_sum(encoded, frac_bits)[0].mean())
    error_in_units = (np.mean(means) - weight * value) * 2**frac_bits
    assert abs(error_in_units) < 6 * 0.5 / np.sqrt(d * trials)


@settings(max_examples=200, deadline=None)
@given(n_max=st.integers(1, 10**6), clip=st.floats(1e-3, 1e3), weight_cap=st.integers(1, 10**4))
def test_largest_safe_frac_bits_passes_and_the_next_fails(n_max: int, clip: float, weight_cap: int) -> None:
    try:
        best = fixedpoint.max_frac_bits(n_max, clip, weight_cap)
    except ParameterError:
        with pytest.raises(ParameterError, match="no frac_bits is safe"):
            fixedpoint.check_no_wrap(n_max, clip, weight_cap, 0)
        assert n_max * (fixedpoint.max_abs(clip, weight_cap) + 1) >= 2**31
        return
    fixedpoint.check_no_wrap(n_max, clip, weight_cap, best)
    assert n_max * (fixedpoint.max_abs(clip, weight_cap) * 2**best + 1) < 2**31
    if best < fixedpoint.MAX_FRAC_BITS:
        with pytest.raises(ParameterError) as info:
            fixedpoint.check_no_wrap(n_max, clip, weight_cap, best + 1)
        message = str(info.value)
        for part in (f"n_max={n_max}", f"clip={clip}", f"weight_cap={weight_cap}", f"frac_bits={best + 1}",
                     f"largest safe frac_bits is {best}"):
            assert part in message


def test_max_frac_bits_examples() -> None:
    assert fixedpoint.max_frac_bits(10, 1.0, 1) == 24  # capped
    # 100 * (1000 * 2^14 + 1) < 2^31 <= 100 * (1000 * 2^15 + 1)
    assert fixedpoint.max_frac_bits(100, 1.0, 1000) == 14
    assert fixedpoint.max_abs(0.5, 10) == 10.0 and fixedpoint.max_abs(4.0, 10) == 40.0
    with pytest.raises(ParameterError, match="n_max=2048"):
        fixedpoint.max_frac_bits(2048, 1.0, 2**20)
    for bad in [(0, 1.0, 1, 0), (1, 0.0, 1, 0), (1, float("inf"), 1, 0), (1, 1.0, 0, 0), (1, 1.0, 1, -1)]:
        with pytest.raises(ParameterError):
            fixedpoint.check_no_wrap(*bad)


@pytest.mark.parametrize(("clip", "weight_cap", "frac_bits"), [(1.5, 1, 24), (1.0, 1000, 10), (0.25, 7, 20),
                                                               (1.0 + 2**-30, 1, 24)])
def test_n_max_encodings_at_the_bound_do_not_wrap(clip: float, weight_cap: int, frac_bits: int) -> None:
    # The largest cohort that passes the check, every worker at the extreme (full weight, the whole norm in
    # one coordinate, both signs): the decoded sums have the right sign and are within n units.
    n_max = 1
    while True:
        try:
            fixedpoint.check_no_wrap(n_max + 1, clip, weight_cap, frac_bits)
        except ParameterError:
            break
        n_max += 1
    for sign in (1.0, -1.0):
        update = np.array([sign * clip, 0.0])
        encodings = [fixedpoint.encode(update, weight_cap, clip=clip, frac_bits=frac_bits,
                                       seed=os.urandom(32)) for _ in range(n_max)]
        signed = np.stack(encodings).view(np.int32).astype(np.int64).sum(axis=0)
        assert np.all(signed < 2**31) and np.all(signed >= -(2**31))
        data, weight = fixedpoint.decode_sum(_sum(encodings), frac_bits)
        assert weight == n_max * weight_cap
        assert np.max(np.abs(data - n_max * weight_cap * update)) <= n_max * 2.0**-frac_bits


def test_clip_l2() -> None:
    update = np.array([3.0, 4.0], dtype=np.float32)
    clipped = fixedpoint.clip_l2(update, 1.0)
    assert clipped.dtype == np.float64 and np.isclose(np.linalg.norm(clipped), 1.0)
    assert np.allclose(clipped, [0.6, 0.8])
    assert update.tolist() == [3.0, 4.0]  # a copy
    short = np.array([0.1, 0.2])
    kept = fixedpoint.clip_l2(short, 1.0)
    assert kept.tolist() == short.tolist() and kept is not short
    for bad in [0.0, -1.0, float("nan")]:
        with pytest.raises(ValueError):
            fixedpoint.clip_l2(short, bad)


def test_encode_and_decode_refuse_bad_input() -> None:
    seed = os.urandom(32)
    good = np.zeros(4)
    for update, weight in [(np.array([1.0, np.nan]), 1), (np.array([np.inf]), 1), (np.zeros((2, 2)), 1),
                           (good, 0), (good, -3)]:
        with pytest.raises(ValueError):
            fixedpoint.encode(update, weight, clip=1.0, frac_bits=8, seed=seed)
    with pytest.raises(ValueError):
        fixedpoint.encode(good, 1, clip=1.0, frac_bits=8, seed=seed[:16])
    with pytest.raises(ValueError):
        fixedpoint.encode(good, 1, clip=1.0, frac_bits=31, seed=seed)
    with pytest.raises(ValueError):
        fixedpoint.decode_sum(np.zeros(3, dtype=np.int32), 8)
    with pytest.raises(ValueError):
        fixedpoint.decode_sum(np.zeros(0, dtype=np.uint32), 8)


def test_same_seed_same_encoding() -> None:
    # The rounding is a function of the seed, so a worker can reproduce (and a test can pin) an encoding.
    update, seed = _vector(50, 0.1), os.urandom(32)
    first = fixedpoint.encode(update, 2, clip=1.0, frac_bits=12, seed=seed)
    assert np.array_equal(first, fixedpoint.encode(update, 2, clip=1.0, frac_bits=12, seed=seed))


@pytest.mark.parametrize(("clip", "n_max"), [(1.0, 10), (10.0, 10), (0.5, 100)])
def test_sixteen_bit_sums_at_the_bound_decode_exactly(clip: float, n_max: int) -> None:
    # The largest frac_bits for 16-bit sums; n_max workers at the extreme, encoded in Z_2^32, reduced to
    # their low 16 bits and summed mod 2^16: the decoded sum equals the 32-bit one.
    frac_bits = fixedpoint.max_frac_bits(n_max, clip, 1, ring_bits=16)
    assert frac_bits < fixedpoint.max_frac_bits(n_max, clip, 1)
    with pytest.raises(ParameterError, match=r"2\^15 \(16-bit sums\)"):
        fixedpoint.check_no_wrap(n_max, clip, 1, frac_bits + 1, ring_bits=16)
    for sign in (1.0, -1.0):
        update = np.array([sign * clip, 0.0, sign * clip / 3])
        encodings = [fixedpoint.encode(update, 1, clip=clip, frac_bits=frac_bits, seed=os.urandom(32))
                     for _ in range(n_max)]
        reduced = [fixedpoint.reduce_ring(e, 16) for e in encodings]
        assert all(r.dtype == np.uint16 for r in reduced)
        total16 = np.sum(np.stack(reduced).astype(np.uint32), axis=0, dtype=np.uint32) & np.uint32(0xFFFF)
        data16, weight16 = fixedpoint.decode_sum(total16, frac_bits, ring_bits=16)
        data32, weight32 = fixedpoint.decode_sum(_sum(encodings), frac_bits)
        np.testing.assert_array_equal(data16, data32)
        assert weight16 == weight32 == n_max


def test_ring_width_is_checked() -> None:
    with pytest.raises(ParameterError, match="ring_bits"):
        fixedpoint.check_no_wrap(10, 1.0, 1, 4, ring_bits=8)
    with pytest.raises(ValueError, match="ring_bits"):
        fixedpoint.reduce_ring(np.zeros(3, np.uint32), 8)
    with pytest.raises(ValueError, match="uint32"):
        fixedpoint.reduce_ring(np.zeros(3, np.int64), 16)
    with pytest.raises(ValueError, match="ring_bits"):
        fixedpoint.decode_sum(np.zeros(3, np.uint32), 4, ring_bits=24)


def _reference_encode(update: np.ndarray, weight: int, clip: float, frac_bits: int, seed: bytes,
                      extra: tuple[float, ...] = ()) -> np.ndarray:
    """The encoding written out whole-vector, as the definition reads: clip, scale, floor, add 1 where
    keystream word i / 2^32 is below the fraction of coordinate i."""
    x = np.asarray(update, dtype=np.float64)
    norm = float(np.sqrt(np.sum(x * x)))
    if norm > clip:
        x = x * (clip / norm)
    v = np.concatenate([x, np.asarray(extra, dtype=np.float64)]) * (weight * 2**frac_bits)
    rounded = np.floor(v) + (prg.keystream_u32(seed, v.shape[0]) < (v - np.floor(v)) * 2.0**32)
    return np.concatenate([rounded.astype(np.int64), [weight * 2**frac_bits]]).astype(np.uint32)


@pytest.mark.parametrize("length", [1, fixedpoint._BLOCK - 1, fixedpoint._BLOCK, 2 * fixedpoint._BLOCK + 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_encoding_equals_the_whole_vector_definition(length: int, dtype: type) -> None:
    # The encoder works a cache-sized block at a time and widens float32 per block; across block edges
    # and for either input precision it must give the definition's integers, keystream word for word.
    # Unclipped (norm below clip), so no float difference in the norm can move a coordinate.
    update = _vector(length, 1e-3).astype(dtype)
    seed = os.urandom(32)
    got = fixedpoint.encode(update, 7, clip=1e6, frac_bits=20, seed=seed, extra=(0.25, 1.0))
    np.testing.assert_array_equal(got, _reference_encode(update, 7, 1e6, 20, seed, (0.25, 1.0)))


def test_clipped_float32_update_stays_within_one_unit_of_the_clipped_vector() -> None:
    update = _vector(3 * fixedpoint._BLOCK + 5, 1.0).astype(np.float32)
    frac_bits, weight, clip = 16, 3, 0.5
    encoded = fixedpoint.encode(update, weight, clip=clip, frac_bits=frac_bits, seed=os.urandom(32))
    data, w = fixedpoint.decode_sum(encoded, frac_bits)
    assert w == weight
    exact = weight * fixedpoint.clip_l2(update.astype(np.float64), clip)
    assert np.max(np.abs(data - exact)) <= 2.0**-frac_bits * (1 + 1e-9)
    assert np.linalg.norm(data) <= weight * clip + np.sqrt(data.size) * 2.0**-frac_bits


def test_extra_values_ride_unclipped_and_are_checked() -> None:
    seed = os.urandom(32)
    update = np.full(100, 10.0)  # clipped to norm 1 ...
    encoded = fixedpoint.encode(update, 2, clip=1.0, frac_bits=10, seed=seed, extra=(1.0, -0.5))
    data, weight = fixedpoint.decode_sum(encoded, 10)
    assert data.shape == (102,) and weight == 2.0
    assert abs(float(np.linalg.norm(data[:100])) - 2.0) < 0.1  # ... and the extras are not
    np.testing.assert_array_equal(data[100:], [2.0, -1.0])  # exact: multiples of a unit
    for bad in [(1.5,), (float("nan"),), (float("inf"),), (0.0, -2.0)]:
        with pytest.raises(ValueError, match="extra values"):
            fixedpoint.encode(update, 1, clip=1.0, frac_bits=10, seed=seed, extra=bad)


def test_a_sequence_of_tensors_encodes_as_their_concatenation() -> None:
    # How a worker encodes its model: tensor by tensor, without one concatenated copy. Parts that cross
    # block edges, mixed precision, and clipping over all parts together.
    seed = os.urandom(32)
    parts = [_vector(fixedpoint._BLOCK + 3, 0.01).astype(np.float32), _vector(7, 0.01), _vector(5000, 0.01)]
    whole = np.concatenate([p.astype(np.float64) for p in parts])
    for clip in (1e6, 0.1):
        got = fixedpoint.encode(parts, 3, clip=clip, frac_bits=18, seed=seed, extra=(0.5,))
        expected = fixedpoint.encode(whole, 3, clip=clip, frac_bits=18, seed=seed, extra=(0.5,))
        if clip > 1:
            np.testing.assert_array_equal(got, expected)
        else:  # the norm is summed in another order: a last-bit difference may move a rare rounding
            assert np.max(np.abs(got.view(np.int32) - expected.view(np.int32))) <= 1
    with pytest.raises(ValueError, match="flat vector"):
        fixedpoint.encode([np.zeros(3), np.zeros((2, 2))], 1, clip=1.0, frac_bits=8, seed=seed)


def test_huge_updates_clip_to_their_direction_not_to_zero() -> None:
    # Squares of 1e200 overflow float64: the norm must still come out finite, so the update is scaled to
    # the clip bound along its direction (in one part or split over several), not to zero.
    update = np.array([3e200, -4e200, 0.0])
    for parts in (update, [update[:1], update[1:]]):
        data, _ = fixedpoint.decode_sum(fixedpoint.encode(parts, 1, clip=1.0, frac_bits=20, seed=os.urandom(32)), 20)
        np.testing.assert_allclose(data, [0.6, -0.8, 0.0], atol=2.0**-19)
    np.testing.assert_allclose(fixedpoint.clip_l2(update, 5.0), [3.0, -4.0, 0.0])

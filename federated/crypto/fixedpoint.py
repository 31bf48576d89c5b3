"""Fixed-point encoding of weighted model updates into Z_2^32, the group the masks live in, and its
16-bit reduction.

A worker with update ``x`` (flat floats) and weight ``w`` (its sample count, capped by the caller at
``weight_cap``) sends ``encode(x, w)``: ``x`` is L2-clipped to ``clip``, multiplied by ``w``, scaled by
``2^f``, stochastically rounded to an integer and stored as two's complement uint32; ``w * 2^f`` (exact)
is appended as one last coordinate so the broker can form a weighted mean. Summing encodings mod 2^32
and ``decode_sum`` give the true weighted sum as long as no partial sum leaves [-2^31, 2^31), which
``check_no_wrap`` guarantees at configuration time:

    n_max * (weight_cap * max(clip, 1) * 2^f + 1) < 2^31

(each coordinate before rounding is at most ``weight_cap * clip * 2^f`` for data and ``weight_cap * 2^f``
for the weight; rounding adds at most 1).

Error: each encoded coordinate is within one unit (2^-f after decoding) of ``w * clip_l2(x)``, and the
rounding is unbiased, so a decoded sum of n encodings is within ``n * 2^-f`` of the exact weighted sum per
coordinate (typically ``sqrt(n) * 2^-f``); the weight sum is exact.

Ring width: reducing mod 2^16 is a ring homomorphism from Z_2^32 onto Z_2^16, so a worker may send only
the low 16 bits of each masked coordinate and the masks still cancel in the (16-bit) sum. That halves the
masked input and is how quantization works under secure aggregation. Every bound above then has
``2^(ring_bits - 1)`` in place of ``2^31``, so the scale 2^f is coarser: with ``ring_bits = 16`` a sum of n
inputs leaves each worker about ``2^15 / n`` levels per unit of ``max(clip, 1) * weight_cap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from federated.crypto import prg
from federated.crypto.errors import ParameterError

__all__ = ["MAX_FRAC_BITS", "RING_BITS", "check_no_wrap", "clip_l2", "decode_sum", "encode", "max_abs",
           "max_frac_bits", "reduce_ring"]

#: ``max_frac_bits`` never goes above this: float32 updates carry 24 significant bits, so finer
#: fixed-point steps would only spend headroom that a larger cohort could use.
MAX_FRAC_BITS = 24
#: The ring widths a masked input can travel in: Z_2^32 (the default) and Z_2^16 (quantized).
RING_BITS = (32, 16)
_WRAP_LIMIT = 2**31
#: Elements per block of the encoder: its float64 scratch (two arrays of 512 KiB) stays in cache,
#: where the half-dozen element-wise passes of stochastic rounding cost a fraction of memory round trips.
_BLOCK = 1 << 16


def max_abs(clip: float, weight_cap: int) -> float:
    """The largest |coordinate| of an encoding before scaling by 2^f: ``weight_cap * max(clip, 1)``
    (data coordinates reach ``weight_cap * clip``, the weight coordinate ``weight_cap``)."""
    return weight_cap * max(clip, 1.0)


def _validate(n_max: int, clip: float, weight_cap: int, ring_bits: int = 32) -> None:
    if ring_bits not in RING_BITS:
        raise ParameterError(f"ring_bits must be one of {RING_BITS}, got {ring_bits!r}")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ParameterError(f"n_max must be an integer >= 1, got {n_max!r}")
    if not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ParameterError(f"clip must be a finite number > 0, got {clip!r}")
    if isinstance(weight_cap, bool) or not isinstance(weight_cap, int) or weight_cap < 1:
        raise ParameterError(f"weight_cap must be an integer >= 1, got {weight_cap!r}")


def _fits(n_max: int, clip: float, weight_cap: int, frac_bits: int, ring_bits: int) -> bool:
    # Exact rational arithmetic: a float product could round a just-too-large bound below 2^31.
    bound = weight_cap * max(Fraction(clip), Fraction(1)) * 2**frac_bits
    return bool(n_max * (bound + 1) < 2 ** (ring_bits - 1))


def _largest_safe(n_max: int, clip: float, weight_cap: int, ring_bits: int) -> int | None:
    best = None
    for frac_bits in range(MAX_FRAC_BITS + 1):
        if not _fits(n_max, clip, weight_cap, frac_bits, ring_bits):
            break
        best = frac_bits
    return best


def _wrap_error(n_max: int, clip: float, weight_cap: int, frac_bits: int, ring_bits: int) -> ParameterError:
    safe = _largest_safe(n_max, clip, weight_cap, ring_bits)
    advice = (f"the largest safe frac_bits is {safe}" if safe is not None
              else "no frac_bits is safe; lower n_max, clip or weight_cap")
    return ParameterError(
        f"secure-aggregation sum could wrap: n_max={n_max}, clip={clip}, weight_cap={weight_cap}, "
        f"frac_bits={frac_bits} give n_max * (weight_cap * max(clip, 1) * 2^frac_bits + 1) = "
        f"{float(n_max * (max_abs(clip, weight_cap) * 2**frac_bits + 1)):.4g} >= 2^{ring_bits - 1} "
        f"({ring_bits}-bit sums); {advice}")


def check_no_wrap(n_max: int, clip: float, weight_cap: int, frac_bits: int, ring_bits: int = 32) -> None:
    """Raise ``ParameterError`` unless the sum of ``n_max`` encodings can never wrap mod 2^ring_bits,
    i.e. ``n_max * (max_abs(clip, weight_cap) * 2^frac_bits + 1) < 2^(ring_bits - 1)``.

    The message names every parameter and the largest safe ``frac_bits`` (or says that none is).
    """
    _validate(n_max, clip, weight_cap, ring_bits)
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or frac_bits < 0:
        raise ParameterError(f"frac_bits must be an integer >= 0, got {frac_bits!r}")
    if not _fits(n_max, clip, weight_cap, frac_bits, ring_bits):
        raise _wrap_error(n_max, clip, weight_cap, frac_bits, ring_bits)


def max_frac_bits(n_max: int, clip: float, weight_cap: int, ring_bits: int = 32) -> int:
    """The largest ``frac_bits`` in [0, 24] that passes ``check_no_wrap``.

    Raises ``ParameterError`` if even ``frac_bits = 0`` could wrap.
    """
    _validate(n_max, clip, weight_cap, ring_bits)
    safe = _largest_safe(n_max, clip, weight_cap, ring_bits)
    if safe is None:
        raise _wrap_error(n_max, clip, weight_cap, 0, ring_bits)
    return safe


def reduce_ring(values: np.ndarray, ring_bits: int) -> np.ndarray:
    """``values`` (uint32, in Z_2^32) reduced to Z_2^ring_bits, in the narrowest unsigned dtype that
    holds it: uint32 unchanged for 32 bits, the low halves as uint16 for 16. Raises ``ValueError`` for
    another width or a non-uint32 array."""
    array = np.asarray(values)
    if array.dtype != np.uint32:
        raise ValueError(f"values must be uint32, got {array.dtype}")
    if ring_bits == 32:
        return array
    if ring_bits == 16:
        return array.astype(np.uint16)  # keeps the low 16 bits: reduction mod 2^16
    raise ValueError(f"ring_bits must be one of {RING_BITS}, got {ring_bits!r}")


def clip_l2(update: np.ndarray, bound: float) -> np.ndarray:
    """A float64 copy of ``update``, scaled down to L2 norm ``bound`` if it is longer.

    Raises ``ValueError`` if ``bound`` is not a finite positive number or ``update`` is not finite.
    """
    if not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"clip bound must be a finite number > 0, got {bound!r}")
    out = np.array(update, dtype=np.float64, copy=True).reshape(-1)
    norm = _norm(out)
    if norm > bound:
        out *= bound / norm
    return out


def _dot_self(array: np.ndarray) -> float:
    """``sum(array**2)`` of a float64 vector, on this thread.

    Not ``np.dot``: OpenBLAS splits a long dot product over its own threads, which then spin-wait for
    more work and take the cores from MLX training in the same process (a secure round at n=100,
    d=1M ran 1.7x slower with them: 8.5 s against 4.9 s).
    """
    return float(np.einsum("i,i->", array, array))


def _norm(array: np.ndarray) -> float:
    """The L2 norm of a flat float vector, in float64, a block at a time (a float32 input is widened in
    cache, not copied).

    Raises ``ValueError`` if ``array`` has a non-finite value.
    """
    if array.dtype == np.float64:
        squared = _dot_self(array)
    else:
        scratch = np.empty(min(_BLOCK, array.shape[0]), dtype=np.float64)
        squared = 0.0
        for start in range(0, array.shape[0], _BLOCK):
            block = scratch[: min(_BLOCK, array.shape[0] - start)]
            np.copyto(block, array[start:start + block.shape[0]], casting="unsafe")
            squared += _dot_self(block)
    # One sum of products both measures the norm and catches Inf/NaN (either makes it non-finite); only
    # then is the slower element-wise check needed, to tell them from squares that overflow. Those are
    # summed again scaled by the largest magnitude (np.linalg.norm squares unscaled and overflows too).
    if math.isfinite(squared):
        return math.sqrt(squared)
    if not np.isfinite(array).all():
        raise ValueError("update has non-finite values")
    largest = float(np.abs(array).max())
    return largest * math.sqrt(_dot_self(array.astype(np.float64) / largest))


def _round_block(values: np.ndarray, pre_scale: float | None, unit: int, limit: int, words: np.ndarray,
                 out: np.ndarray, scaled: np.ndarray, rounded: np.ndarray, below: np.ndarray) -> None:
    """Stochastically round ``values * pre_scale * unit`` into ``out`` (int32 or int64, wide enough for
    ``limit``), using the keystream ``words`` (uint32) and scratch arrays of the same length, all in cache."""
    np.copyto(scaled, values, casting="unsafe")  # exact: float32 and float64 both widen exactly
    if pre_scale is not None:
        scaled *= pre_scale
    scaled *= unit
    np.floor(scaled, out=rounded)
    # |v| <= w * clip * 2^f, so floor(v) fits ``out`` (the clamp below catches float rounding's +-1).
    np.copyto(out, rounded, casting="unsafe")
    # floor(v) + [u < frac(v)] has the distribution of floor(v + u) but is exact: v + u would round away
    # the low bits of u once |v| > 2^21, biasing the rounding. u is a keystream word k / 2^32, and
    # k < frac * 2^32 is the same test as k / 2^32 < frac (scaling by 2^32 is exact), done in place.
    frac = np.subtract(scaled, rounded, out=scaled)
    frac *= 2.0**32
    np.less(words, frac, out=below)
    np.add(out, below, out=out)  # in the integers: half the bytes of a float64 pass
    # The clamp only absorbs float rounding in the norm and the scaling, so the wrap guarantee of
    # check_no_wrap holds exactly.
    np.clip(out, -limit, limit, out=out)


def encode(update: np.ndarray | Sequence[np.ndarray], weight: int, *, clip: float, frac_bits: int, seed: bytes,
           extra: tuple[float, ...] = ()) -> np.ndarray:
    """The uint32 encoding of ``weight * clip_l2(update, clip)`` at scale 2^frac_bits, then ``weight *
    extra[i] * 2^frac_bits`` for each ``extra`` value (not clipped), then ``weight * 2^frac_bits`` as the
    last coordinate (length ``len(update) + len(extra) + 1``).

    ``update`` is a flat float32 or float64 vector, or a sequence of them read as their concatenation
    (a model's tensors, without copying them into one vector). Nothing is widened to float64 whole: the
    work is done in cache-sized blocks. ``extra`` carries scalars such as the loss; each must be finite
    and at most ``max(clip, 1)`` in magnitude, the bound ``check_no_wrap`` assumes. ``seed`` (32 bytes,
    fresh per encoding) drives the stochastic rounding: word ``i`` of ``prg.keystream_u32(seed, ...)``
    rounds coordinate ``i``. ``weight`` must be an integer >= 1 that the caller has already capped at
    ``weight_cap``. Raises ``ValueError`` for a non-1-D or non-finite update, an out-of-range extra, a
    bad weight, clip, frac_bits or seed.
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight < 1:
        raise ValueError(f"weight must be an integer >= 1, got {weight!r}")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits <= 30:
        raise ValueError(f"frac_bits must be an integer in [0, 30], got {frac_bits!r}")
    if not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip bound must be a finite number > 0, got {clip!r}")
    parts = [np.asarray(p) for p in ([update] if isinstance(update, np.ndarray) else update)]
    for i, part in enumerate(parts):
        if part.ndim != 1:
            raise ValueError(f"update must be a flat vector, got shape {part.shape}")
        if part.dtype not in (np.float32, np.float64):
            parts[i] = part.astype(np.float64)
    tail = np.array(extra, dtype=np.float64).reshape(-1)
    if tail.size and (not np.isfinite(tail).all() or np.abs(tail).max() > max(clip, 1.0)):
        raise ValueError(f"extra values must be finite and within max(clip, 1) = {max(clip, 1.0)}, got {extra!r}")
    weight = int(weight)
    unit = weight * 2**frac_bits  # exact: an integer well below 2^53
    if unit >= _WRAP_LIMIT:
        raise ValueError(f"weight * 2^frac_bits = {unit} does not fit in an int32")
    norm = math.hypot(*(_norm(part) for part in parts))  # hypot: no overflow from squaring huge norms
    pre_scale = clip / norm if norm > clip else None
    n = sum(part.shape[0] for part in parts) + tail.shape[0]
    out = np.empty(n + 1, dtype=np.uint32)
    limit = math.floor(Fraction(clip) * unit) + 1
    tail_limit = math.floor(max(Fraction(clip), Fraction(1)) * unit) + 1
    # Two's complement in Z_2^32 is the low 32 bits of the signed integer: write through an int32 view
    # when every value fits one, else through int64 and keep the low words.
    wide = max(limit, tail_limit) + 1 >= _WRAP_LIMIT  # floor(v) + 1 before the clamp must fit too
    signed = np.empty(n, dtype=np.int64) if wide else out[:-1].view(np.int32)
    keystream = prg.Keystream(seed, _BLOCK)
    size = min(_BLOCK, max(n, 1))
    scaled, rounded = np.empty(size), np.empty(size)
    below = np.empty(size, dtype=bool)
    offset = 0
    for part, scale, bound in [(p, pre_scale, limit) for p in parts] + [(tail, None, tail_limit)]:
        for start in range(0, part.shape[0], _BLOCK):
            block = part[start:start + _BLOCK]
            k = block.shape[0]
            _round_block(block, scale, unit, bound, keystream.next(k), signed[offset:offset + k],
                         scaled[:k], rounded[:k], below[:k])
            offset += k
    if wide:
        out[:-1] = signed  # the int64 -> uint32 cast keeps the low 32 bits
    out[-1] = unit
    return out


def decode_sum(total: np.ndarray, frac_bits: int, ring_bits: int = 32) -> tuple[np.ndarray, float]:
    """Decode a sum of encodings: ``(float64 data sum, weight sum)``, both scaled back by 2^-frac_bits.

    Reads each uint32 as a two's complement integer of ``ring_bits`` bits (only the low ``ring_bits``
    count), which is the true sum while ``check_no_wrap`` holds for that width.
    Raises ``ValueError`` if ``total`` is not a non-empty 1-D uint32 array or the width is not supported.
    """
    array = np.asarray(total)
    if array.dtype != np.uint32 or array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(f"total must be a non-empty 1-D uint32 array, got {array.dtype} {array.shape}")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or frac_bits < 0:
        raise ValueError(f"frac_bits must be an integer >= 0, got {frac_bits!r}")
    if ring_bits not in RING_BITS:
        raise ValueError(f"ring_bits must be one of {RING_BITS}, got {ring_bits!r}")
    signed = np.ascontiguousarray(array).view(np.int32) if ring_bits == 32 else array.astype(np.uint16).view(np.int16)
    scale = 2.0**-frac_bits
    return signed[:-1].astype(np.float64) * scale, float(signed[-1]) * scale

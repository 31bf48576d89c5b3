"""Shamir secret sharing of 32-byte secrets over the prime field p = 2^521 - 1.

A secret is one field element (its 32 bytes read big-endian, so < 2^256 < p). ``split`` evaluates a
random polynomial of degree ``threshold - 1`` whose constant term is the secret; any ``threshold`` shares
rebuild it by Lagrange interpolation at 0, and any ``threshold - 1`` shares are uniformly distributed
whatever the secret is. A share travels as 66 big-endian bytes (``to_bytes``); its x is the holder's
index, known from context.

The field is the Mersenne prime 2^521 - 1: a 32-byte secret fits in one element with room to spare, so a
reconstructed value >= 2^256 exposes shares that do not belong together (with probability 1 - 2^-265
for random garbage; see ``reconstruct`` for what it does not catch).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from functools import lru_cache

from federated.crypto.errors import ReconstructionError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "from_bytes", "lagrange_at_zero", "reconstruct",
           "split", "to_bytes"]

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME = 2**521 - 1
#: Bytes of one share on the wire: ceil(521 / 8).
SHARE_BYTES = 66
#: Bytes of one secret (a key or seed).
SECRET_BYTES = 32


def _check_xs(xs: Sequence[int], prime: int) -> tuple[int, ...]:
    points = tuple(xs)
    for x in points:
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < prime:
            raise ValueError(f"share x must be an integer in [1, p), got {x!r}")
    if len(set(points)) != len(points):
        raise ValueError(f"share x values must be distinct, got {sorted(points)}")
    return points


def _split_int(secret: int, xs: Sequence[int], threshold: int, prime: int,
               randbelow: Callable[[int], int]) -> list[int]:
    """Shares of field element ``secret`` at ``xs``; ``prime`` and ``randbelow`` are parameters only so
    that tests can run the same code in a tiny field with enumerated coefficients."""
    points = _check_xs(xs, prime)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be an integer >= 1, got {threshold!r}")
    if threshold > len(points):
        raise ValueError(f"threshold {threshold} is more than the {len(points)} holders")
    # coefficients[0] is the secret; the rest are uniform, which is what makes t-1 shares reveal nothing.
    coefficients = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        value = 0
        for c in reversed(coefficients):  # Horner
            value = (value * x + c) % prime
        shares.append(value)
    return shares


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[int]:
    """The shares of a 32-byte ``secret`` at each x in ``xs`` (same order), any ``threshold`` of which
    rebuild it.

    Coefficients come from ``secrets.randbelow``. Raises ``ValueError`` if the secret is not 32 bytes,
    ``threshold < 1`` or ``> len(xs)``, or the xs are not distinct integers in [1, p).
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        got = len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {got}")
    return _split_int(int.from_bytes(secret, "big"), xs, threshold, PRIME, secrets.randbelow)


def _lagrange(points: tuple[int, ...], prime: int) -> tuple[int, ...]:
    # lambda_i = prod_{j != i} x_j / (x_j - x_i); one shared numerator, one inverse per point.
    numerator = 1
    for x in points:
        numerator = numerator * x % prime
    coefficients = []
    for i, xi in enumerate(points):
        denominator = xi
        for j, xj in enumerate(points):
            if j != i:
                denominator = denominator * (xj - xi) % prime
        coefficients.append(numerator * pow(denominator, -1, prime) % prime)
    return tuple(coefficients)


@lru_cache(maxsize=256)
def _lagrange_cached(points: tuple[int, ...]) -> tuple[int, ...]:
    return _lagrange(points, PRIME)


def lagrange_at_zero(xs: Sequence[int]) -> tuple[int, ...]:
    """Coefficients ``c`` with ``f(0) = sum(c[i] * f(xs[i])) mod p`` for any polynomial of degree
    ``< len(xs)``.

    Cached per tuple of xs: the broker rebuilds many secrets from the same set of holders.
    Raises ``ValueError`` for duplicate xs or xs outside [1, p).
    """
    return _lagrange_cached(_check_xs(xs, PRIME))


def reconstruct(points: Sequence[tuple[int, int]], threshold: int, *, check_extra: int = 1) -> bytes:
    """The 32-byte secret from ``(x, share)`` points.

    Uses exactly the first ``threshold`` points by increasing x (deterministic whatever the arrival
    order), and checks that up to ``check_extra`` further points lie on the same polynomial, so a single
    altered share among ``threshold + 1`` is caught rather than silently shifting the secret. Raises ``ReconstructionError`` for fewer than ``threshold``
    points, duplicate or out-of-range x, a share outside the field, or a result that is not a 32-byte
    secret (inconsistent shares); ``ValueError`` for ``threshold < 1``.

    The range check catches garbage (a share from another secret or a wrong key) with probability
    1 - 2^-265, not a deliberate small change: with small holder indices the Lagrange coefficients are
    small, so share + delta shifts the secret by a small multiple of delta and still looks valid.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be an integer >= 1, got {threshold!r}")
    if len(points) < threshold:
        raise ReconstructionError(f"need {threshold} shares, got {len(points)}")
    ordered = sorted(points, key=lambda point: point[0])
    xs = [x for x, _ in ordered]
    if len(set(xs)) != len(xs):
        raise ReconstructionError(f"duplicate share x values in {xs}")
    for x, y in ordered:
        if not 1 <= x < PRIME or not 0 <= y < PRIME:
            raise ReconstructionError(f"share ({x}, ...) is outside the field")
    used = ordered[:threshold]
    coefficients = lagrange_at_zero(tuple(x for x, _ in used))
    value = sum(c * y for c, (_, y) in zip(coefficients, used, strict=True)) % PRIME
    if value >= 1 << (8 * SECRET_BYTES):
        raise ReconstructionError("shares are inconsistent: the interpolated value is not a 32-byte secret")
    for x_extra, y_extra in ordered[threshold:threshold + check_extra]:
        # f(x_extra) is the value at 0 of the same points shifted by -x_extra.
        shifted = _lagrange(tuple((x - x_extra) % PRIME for x, _ in used), PRIME)
        if sum(c * y for c, (_, y) in zip(shifted, used, strict=True)) % PRIME != y_extra:
            raise ReconstructionError(f"shares are inconsistent: the share at x={x_extra} does not fit the others")
    return value.to_bytes(SECRET_BYTES, "big")


def to_bytes(share: int) -> bytes:
    """A share as 66 big-endian bytes. Raises ``ValueError`` if it is not in [0, p)."""
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share < PRIME:
        raise ValueError("share must be an integer in [0, 2^521 - 1)")
    return share.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """A share from 66 big-endian bytes. Raises ``ValueError`` for another length or a value >= p."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    share = int.from_bytes(data, "big")
    if share >= PRIME:
        raise ValueError("share is not a field element (>= 2^521 - 1)")
    return share

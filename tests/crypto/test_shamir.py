"""Shamir sharing over GF(2^521 - 1): any t shares rebuild the secret, t - 1 reveal nothing."""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.crypto import shamir
from federated.crypto.errors import ReconstructionError

SECRETS = st.binary(min_size=32, max_size=32)
PROPERTY = settings(max_examples=60, deadline=None)


def _draws_from(values: list[int]) -> Callable[[int], int]:
    """A stand-in for ``secrets.randbelow`` that returns the given coefficients in order."""
    remaining = iter(values)
    return lambda _bound: next(remaining)


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    n = draw(st.integers(1, 12))
    threshold = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, shamir.PRIME - 1), min_size=n, max_size=n, unique=True))
    return draw(SECRETS), xs, threshold


@PROPERTY
@given(sharings(), st.data())
def test_any_t_shares_reconstruct(case: tuple[bytes, list[int], int], data: st.DataObject) -> None:
    secret, xs, threshold = case
    points = list(zip(xs, shamir.split(secret, xs, threshold), strict=True))
    chosen = data.draw(st.permutations(points))[:data.draw(st.integers(threshold, len(points)))]
    assert shamir.reconstruct(chosen, threshold) == secret


@PROPERTY
@given(sharings())
def test_t_minus_one_shares_do_not_reconstruct(case: tuple[bytes, list[int], int]) -> None:
    secret, xs, threshold = case
    if threshold < 2:
        return
    points = list(zip(xs, shamir.split(secret, xs, threshold), strict=True))
    with pytest.raises(ReconstructionError):
        shamir.reconstruct(points[:threshold - 1], threshold)
    # Interpolating t - 1 points gives a uniform field element: almost surely >= 2^256 (flagged as
    # inconsistent), and otherwise some other 32-byte value.
    try:
        assert shamir.reconstruct(points[:threshold - 1], threshold - 1) != secret
    except ReconstructionError:
        pass


def test_t_minus_one_shares_are_uniform_whatever_the_secret() -> None:
    # The same code in GF(11), t = 3, with every possible pair of random coefficients: the two shares at
    # x = 2 and x = 5 take each of the 121 possible values exactly once for every secret, so they carry
    # no information about it (perfect secrecy), while three shares always pin it down.
    prime, threshold, xs = 11, 3, (2, 5, 7)
    lagrange = shamir._lagrange(xs, prime)
    for secret in range(prime):
        seen: Counter[tuple[int, int]] = Counter()
        for a1, a2 in itertools.product(range(prime), repeat=2):
            shares = shamir._split_int(secret, xs, threshold, prime, _draws_from([a1, a2]))
            seen[(shares[0], shares[1])] += 1
            assert sum(c * y for c, y in zip(lagrange, shares, strict=True)) % prime == secret
        assert len(seen) == prime**2 and set(seen.values()) == {1}


def test_split_then_lagrange_matches_explicit_polynomial() -> None:
    # f(x) = 9 + 3x + 4x^2 in the real field.
    shares = shamir._split_int(9, [1, 2, 3], 3, shamir.PRIME, _draws_from([3, 4]))
    assert shares == [16, 31, 54]
    assert shamir.reconstruct([(1, 16), (2, 31), (3, 54)], 3) == (9).to_bytes(32, "big")


def test_garbage_shares_are_detected() -> None:
    # A share replaced by an unrelated field element (a wrong key, a mix-up of secrets) moves the result
    # to a uniform field element, which is >= 2^256 except with probability 2^-265.
    secret = os.urandom(32)
    xs = list(range(1, 8))
    points = list(zip(xs, shamir.split(secret, xs, 4), strict=True))
    points[2] = (points[2][0], int.from_bytes(os.urandom(66), "big") % shamir.PRIME)
    with pytest.raises(ReconstructionError, match="inconsistent"):
        shamir.reconstruct(points[:4], 4)


def test_a_small_change_to_one_share_is_not_detected() -> None:
    # The limit of the range check: with holder indices 1..4 the Lagrange coefficients are the small
    # integers (4, -6, 4, -1), so share 3 + 1 shifts the secret by exactly 4 and still looks valid.
    # Integrity of individual shares must come from elsewhere (AEAD in transit, or extra shares).
    secret = (1000).to_bytes(32, "big")
    xs = [1, 2, 3, 4]
    points = list(zip(xs, shamir.split(secret, xs, 4), strict=True))
    assert shamir.lagrange_at_zero(xs) == (4, shamir.PRIME - 6, 4, shamir.PRIME - 1)
    points[2] = (3, (points[2][1] + 1) % shamir.PRIME)
    assert shamir.reconstruct(points, 4) == (1004).to_bytes(32, "big")


def test_reconstruct_uses_the_first_t_points_by_x() -> None:
    secret = os.urandom(32)
    xs = [5, 1, 9, 3, 7]
    points = list(zip(xs, shamir.split(secret, xs, 3), strict=True))
    # A corrupted point beyond the first three by x is not used.
    corrupted = [(x, y if x != 9 else 0) for x, y in points]
    assert shamir.reconstruct(corrupted, 3) == secret


@pytest.mark.parametrize(("points", "threshold"), [
    ([], 1),
    ([(1, 5)], 2),
    ([(1, 5), (1, 5)], 2),
    ([(1, 5), (2, shamir.PRIME)], 2),
    ([(0, 5), (2, 6)], 2),
])
def test_reconstruct_refuses_bad_points(points: list[tuple[int, int]], threshold: int) -> None:
    with pytest.raises(ReconstructionError):
        shamir.reconstruct(points, threshold)


def test_split_refuses_bad_arguments() -> None:
    secret = bytes(32)
    for bad in [{"secret": bytes(31), "xs": [1, 2], "threshold": 1},
                {"secret": secret, "xs": [1, 2], "threshold": 0},
                {"secret": secret, "xs": [1, 2], "threshold": 3},
                {"secret": secret, "xs": [1, 1], "threshold": 1},
                {"secret": secret, "xs": [0, 1], "threshold": 1},
                {"secret": secret, "xs": [1, shamir.PRIME], "threshold": 1}]:
        with pytest.raises(ValueError):
            shamir.split(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shamir.reconstruct([(1, 1)], 0)
    with pytest.raises(ValueError):
        shamir.lagrange_at_zero([2, 2])


@PROPERTY
@given(st.integers(0, shamir.PRIME - 1))
def test_share_bytes_round_trip(share: int) -> None:
    encoded = shamir.to_bytes(share)
    assert len(encoded) == shamir.SHARE_BYTES == 66
    assert shamir.from_bytes(encoded) == share


def test_share_bytes_errors() -> None:
    for bad in [-1, shamir.PRIME, shamir.PRIME + 1]:
        with pytest.raises(ValueError):
            shamir.to_bytes(bad)
    for blob in [bytes(65), bytes(67), shamir.PRIME.to_bytes(66, "big"), b"\xff" * 66]:
        with pytest.raises(ValueError):
            shamir.from_bytes(blob)


def test_lagrange_coefficients_are_cached() -> None:
    xs = tuple(range(100, 140))
    first = shamir.lagrange_at_zero(xs)
    assert shamir.lagrange_at_zero(list(xs)) is first


def test_broker_scale_reconstruction_is_fast() -> None:
    # ~100 secrets from the same 50 holders, as the broker does at unmask time. The target is well under
    # 0.1 s; the assertion is loose because the machine is shared.
    holders = list(range(1, 101))
    sharings = [(secret := os.urandom(32), shamir.split(secret, holders, 50)) for _ in range(100)]
    start = time.perf_counter()
    for secret, shares in sharings:
        assert shamir.reconstruct(list(zip(holders, shares, strict=True)), 50) == secret
    assert time.perf_counter() - start < 1.0


def test_an_extra_share_catches_a_small_change() -> None:
    secret = (1000).to_bytes(32, "big")
    xs = [1, 2, 3, 4, 5]
    points = list(zip(xs, shamir.split(secret, xs, 4), strict=True))
    assert shamir.reconstruct(points, 4) == secret
    for i in range(5):  # whichever share is altered, the fifth point exposes it
        bad = list(points)
        bad[i] = (bad[i][0], (bad[i][1] + 1) % shamir.PRIME)
        with pytest.raises(ReconstructionError, match="does not fit"):
            shamir.reconstruct(bad, 4)

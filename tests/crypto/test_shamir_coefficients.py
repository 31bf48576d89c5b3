"""Shamir coefficients come from the OS CSPRNG (README: "secrets come from the OS CSPRNG"), found
unguarded by the mutation check (``benchmarks/mutation.py``): with fixed coefficients every other test
still passed, yet one share at t = 2 would give the secret away (share = secret + c * x)."""

from __future__ import annotations

import os
import secrets

import pytest

from federated.crypto import shamir


def test_the_coefficients_are_drawn_from_secrets_randbelow(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(bound: int) -> int:
        calls.append(bound)
        return secrets.SystemRandom().randrange(bound)

    monkeypatch.setattr("federated.crypto.shamir.secrets.randbelow", spy)
    shamir.split(os.urandom(32), [1, 2, 3, 4, 5], 3)
    assert calls == [shamir.PRIME, shamir.PRIME]  # t - 1 coefficients, each uniform in the field


def test_two_sharings_of_one_secret_have_no_share_in_common() -> None:
    # Fresh coefficients: two sharings agree at a point with probability 1/p, about 2^-521.
    secret = os.urandom(32)
    first, second = shamir.split(secret, [1, 2, 3], 2), shamir.split(secret, [1, 2, 3], 2)
    assert all(a != b for a, b in zip(first, second, strict=True))
    points = [(1, first[0]), (2, first[1])]
    assert shamir.reconstruct(points, 2) == secret

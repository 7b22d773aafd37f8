"""Shamir sharing over GF(2^256 + 297): reconstruction, secrecy, the byte layout, the old API."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprivacy.secagg.errors import InvalidSecAggMessage
from fedprivacy.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    SecureAggregationProtocol,
    Share,
    combine_shares,
    create_shares,
)

secrets_ = st.integers(min_value=0, max_value=PRIME - 1)


def _interpolate_at(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * (x - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


def test_prime_is_the_smallest_prime_above_2_to_256() -> None:
    # Miller-Rabin with fixed bases: 2^256 + 297 prime, no prime in between (a golden value).
    def probably_prime(n: int) -> bool:
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
            x = pow(a, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                return False
        return True

    assert PRIME == 2**256 + 297 and probably_prime(PRIME)
    assert not any(probably_prime(2**256 + i) for i in range(1, 297, 2))


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, n=st.integers(1, 12), data=st.data())
def test_any_threshold_shares_reconstruct_the_secret(
    secret: int, n: int, data: st.DataObject
) -> None:
    # Prepare
    t = data.draw(st.integers(1, n))
    shares = create_shares(secret, threshold=t, num_shares=n)
    subset = data.draw(st.permutations(shares))[:t]

    # Execute / Assert
    assert combine_shares(subset, threshold=t) == secret


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, candidate=secrets_, n=st.integers(2, 10), data=st.data())
def test_fewer_than_threshold_shares_fit_every_candidate_secret(
    secret: int, candidate: int, n: int, data: st.DataObject
) -> None:
    # Prepare: t - 1 shares of a t-of-n sharing.
    t = data.draw(st.integers(2, n))
    shares = create_shares(secret, threshold=t, num_shares=n)[: t - 1]

    # Execute: the polynomial of degree < t through (0, candidate) and the t - 1 shares.
    points = [(0, candidate)] + [(s.x, s.y) for s in shares]

    # Assert: it exists for every candidate and passes through every share, so the shares
    # say nothing about the secret; and t - 1 shares alone do not give the secret back.
    assert all(_interpolate_at(points, s.x) == s.y for s in shares)
    assert _interpolate_at(points, 0) == candidate
    if t > 2:
        assert combine_shares(shares, threshold=t - 1) != secret  # fails with odds 1/PRIME


def test_too_few_or_duplicate_shares_are_refused() -> None:
    shares = create_shares(7, threshold=3, num_shares=5)
    with pytest.raises(ValueError, match="need 3 shares"):
        combine_shares(shares[:2], threshold=3)
    with pytest.raises(ValueError, match="distinct x"):
        combine_shares([shares[0], shares[0], shares[1]], threshold=3)


@settings(max_examples=30, deadline=None)
@given(x=st.integers(1, 0xFFFF), y=secrets_)
def test_share_bytes_round_trip(x: int, y: int) -> None:
    share = Share(x=x, y=y)
    encoded = share.to_bytes()
    assert len(encoded) == SHARE_BYTES and Share.from_bytes(encoded) == share


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(SHARE_BYTES - 1),
        bytes(SHARE_BYTES + 1),
        b"\x02" + bytes(SHARE_BYTES - 1),  # unknown version
        b"\x01\x00\x00" + bytes(33),  # x = 0
        b"\x01\x01\x00" + (PRIME).to_bytes(33, "little"),  # y outside the field
    ],
)
def test_malformed_share_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidSecAggMessage):
        Share.from_bytes(data)


def test_the_original_design_api_shares_and_reconstructs() -> None:
    # Prepare
    protocol = SecureAggregationProtocol(threshold=3)
    secret = random.Random(0).randrange(PRIME)

    # Execute
    shares = protocol.generate_secret_shares(secret, num_parties=5)

    # Assert
    assert len(shares) == 5
    assert protocol.reconstruct_secret(shares[2:]) == secret
    assert protocol.reconstruct_secret([shares[4], shares[0], shares[2]]) == secret
